"""Entry point: `python pipelines/chat.py [overrides...]`."""

import sys

from hamdam.cli import run

if __name__ == "__main__":
    run("chat", sys.argv[1:])

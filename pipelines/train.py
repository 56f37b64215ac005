"""Entry point for DVC stages and scripts: `python pipelines/train.py [overrides...]`."""

import sys

from hamdam.cli import run

if __name__ == "__main__":
    run("train", sys.argv[1:])

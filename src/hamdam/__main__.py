"""``python -m hamdam ...``: the same as the ``hamdam`` command."""

from hamdam.cli import main

main()

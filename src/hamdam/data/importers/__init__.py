"""Readers for ``hamdam data import --format ...``: each turns one file into dialogues.

Every reader has ``read(path) -> Iterator[Dialogue]`` and, once read, ``stats`` with a
``summary()``; ``conf/importer/<format>.yaml`` names the reader and its settings.
"""

"""Hand-written pairs kept as they were authored (corpus/sample_fa.json, corpus/eval_fa.jsonl)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from hamdam.data.records import load_dialogues


class AuthoredPairs:
    """A source file of records, passed through validation and normalization unchanged otherwise."""

    def __init__(self, path: str):
        self.path = Path(path)

    def records(self) -> Iterator[dict]:
        for dialogue in load_dialogues(self.path):
            yield dialogue.to_record()

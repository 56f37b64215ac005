"""Dialogue records (``.jsonl`` lines or a ``.json`` array) in hamdam's own record shapes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hamdam.data.records import Dialogue, iter_records, parse_record


@dataclass
class RecordStats:
    dialogues: int = 0
    exchanges: int = 0

    def summary(self) -> str:
        return f"dialogues {self.dialogues}, exchanges {self.exchanges}"


class RecordsReader:
    """Validates each record exactly as training would, so a bad one stops the import, named."""

    def __init__(self) -> None:
        self.stats = RecordStats()

    def read(self, path: str | Path) -> Iterator[Dialogue]:
        self.stats = RecordStats()
        for where, value in iter_records(Path(path)):
            dialogue = parse_record(value, where)
            self.stats.dialogues += 1
            self.stats.exchanges += len(dialogue.turns) // 2
            yield dialogue

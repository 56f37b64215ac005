"""The sources under ``data/``: every file is one immutable source, tagged with who wrote it.

    data/seed/*.jsonl       the authored corpus, built from corpus/ (human)
    data/imports/*.jsonl    imported chat exports and corpora (human)
    data/rounds/*.jsonl     records learned from chats (per record; model replies are "chat")
    data/generated/*.jsonl  the model's own samples (generated)

A record may carry ``"origin": "human" | "chat" | "generated"`` to override its folder's default,
and ``"card": NAME``: the persona card whose words (or chats) it holds, which retiring the card
excludes from learning and, on request, deletes.
Human-written data is never evicted by the cap; model-written data is filtered strictly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hamdam.data.records import Dialogue, iter_records, parse_record
from hamdam.errors import DataError

KINDS: dict[str, str] = {"seed": "human", "imports": "human", "rounds": "chat", "generated": "generated"}
ORIGINS = ("human", "chat", "generated")


@dataclass(frozen=True)
class SourceRecord:
    dialogue: Dialogue
    origin: str
    source: str  # path relative to the data directory, e.g. "rounds/0003.jsonl"
    order: int  # position across all sources: older sources first
    card: str | None = None  # the persona card these words belong to (imports and chats), if any


def source_files(data_dir: Path) -> list[Path]:
    """Source files in a fixed order: by kind (as in KINDS), then by name (rounds are numbered)."""
    files = []
    for kind in KINDS:
        folder = data_dir / kind
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".json"))
    return files


def iter_sources(data_dir: Path) -> Iterator[SourceRecord]:
    data_dir = Path(data_dir)
    files = source_files(data_dir)
    if not files:
        raise DataError(
            f"No sources under '{data_dir}' (expected .jsonl files in {', '.join(KINDS)}/). On a "
            "fresh clone, run `hamdam data build` to build data/seed from corpus/, or `dvc pull`."
        )
    order = 0
    for path in files:
        default = KINDS[path.parent.name]
        for where, value in iter_records(path):
            origin = value.get("origin", default) if isinstance(value, dict) else default
            if origin not in ORIGINS:
                raise DataError(f"{where}: origin {origin!r} is not one of {', '.join(ORIGINS)}.")
            card = value.get("card") if isinstance(value, dict) else None
            yield SourceRecord(parse_record(value, where), origin, str(path.relative_to(data_dir)), order, card)
            order += 1

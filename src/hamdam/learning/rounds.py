"""A round's data side, in three named steps: collect -> filter -> version.

- **collect**: a collector of the round's kind claims its material in the chat store in one
  transaction (a ``chat`` round: the eligible turns), recording the round as ``exporting``.
- **filter**: the claimed material becomes records, and only those passing the quality filters
  and the safety checks are kept.
- **version**: the records are written to the round's file (``data/rounds/NNNN.jsonl`` for a chat
  round, ``data/generated/NNNN.jsonl`` for a generated one), ``dvc add data`` and a git commit of
  ``data.dvc`` follow, and the round becomes ``versioned``.

Crash-safe order: the claim is committed first; filter and version are redone on the next start if
the process died in between (``resume``). The file's bytes depend only on what the store holds, so
redoing the steps writes the same version.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

from hamdam.data.normalize import normalize_text
from hamdam.data.quality import QualityFilter
from hamdam.data.records import Dialogue, Turn
from hamdam.data.versioning import publish, staged_file
from hamdam.errors import HamdamError
from hamdam.learning.store import ChatStore, RoundRow, RoundStatus, StoredTurn
from hamdam.persona.card import PersonaHeader
from hamdam.safety.detector import LayeredDetector
from hamdam.safety.pii import scrub

log = logging.getLogger(__name__)


class Collector(Protocol):
    """Where a kind of round gets its material. ``candidates`` reads only what ``collect`` stored."""

    kind: str

    def collect(self, store: ChatStore, up_to: int | None) -> int | None: ...

    def candidates(self, store: ChatStore, number: int) -> list[dict]: ...


def round_record(turn: StoredTurn) -> dict:
    """A training record from a turn: PII scrubbed; a /fix replaces the reply and makes it human-written.

    A model's reply stays as it was written until the filter has seen it: normalizing first would
    remove the control characters that mark a gibberish reply."""
    reply = normalize_text(turn.fixed_reply) if turn.fixed_reply else turn.reply
    return {
        "instruction": scrub(normalize_text(turn.message)),
        "response": scrub(reply),
        "origin": "human" if turn.fixed_reply else "chat",
        "turn_id": turn.id,
        **_record_fields(turn.persona),
    }


def _record_fields(header: PersonaHeader | None) -> dict[str, str]:
    return header.record_fields() if header else {}


class ChatTurns:
    """``chat`` rounds: the stored turns nobody excluded (/bad, /forget, crisis, withheld replies)."""

    kind = "chat"

    def __init__(self, include_unrated: bool = True):
        self.include_unrated = include_unrated

    def collect(self, store: ChatStore, up_to: int | None) -> int | None:
        turns = store.eligible(self.include_unrated, up_to)
        return store.open_round(self.kind, [t.id for t in turns]) if turns else None

    def candidates(self, store: ChatStore, number: int) -> list[dict]:
        return [round_record(t) for t in store.round_turns(number)]


class GeneratedSamples:
    """``generated`` rounds as stored: the samples ``hamdam selfgen`` kept (its collector,
    ``hamdam.selfgen.collector.SelfGenerated``, generates them). Any cycle can finish such a round."""

    kind = "generated"

    def collect(self, store: ChatStore, up_to: int | None) -> int | None:
        return None  # only the self-generation loop makes new ones

    def candidates(self, store: ChatStore, number: int) -> list[dict]:
        return [
            {
                "instruction": s.prompt,
                "response": s.reply,
                "origin": "generated",
                "prompt_origin": s.prompt_origin,
                **_record_fields(PersonaHeader.stored(s.relation, s.listener, s.card)),
            }
            for s in store.round_samples(number)
        ]


class RoundFilter:
    """Model-written replies pass the filters generated data passes (a /fix is the user's own text);
    no reply the output guard withholds and no crisis or concern message is ever learned."""

    def __init__(self, quality: QualityFilter, safety: LayeredDetector | None = None):
        self.quality = quality
        self.safety = safety

    def __call__(self, records: list[dict]) -> list[dict]:
        kept = []
        for record in records:
            dialogue = Dialogue((Turn("user", record["instruction"]), Turn("assistant", record["response"])))
            if record["origin"] != "human" and self.quality.reject(dialogue):
                continue
            if self.safety is not None and self._unsafe(record):
                continue
            kept.append({**record, "response": normalize_text(record["response"])})
        return kept

    def _unsafe(self, record: dict) -> bool:
        harm = self.safety.unsafe_reply(record["response"])  # a /fix too: it teaches the persona
        if harm is None:
            level = self.safety.classify(record["instruction"]).level
            harm = None if level == "none" else f"{level} message"
        if harm is None:
            return False
        log.info("record %s kept out of the round by the safety checks (%s)", record.get("turn_id", "?"), harm)
        return True


class DataVersioner:
    """Writes a round's records as a new source under data/ and versions data/ (DVC, then git).

    The file is private (0600): chat rounds hold what people told the companion."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __call__(self, row: RoundRow, records: list[dict]) -> tuple[str | None, str | None]:
        target = self.root / "data" / row.source
        with staged_file(self.root, target.name) as (out, staged):
            out.writelines(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        message = f"data: {row.kind} round {row.number} ({len(records)} records, data/{row.source})"
        md5, commit = publish(self.root, {staged: target}, message)
        log.info("round %d (%s): %d records in data/%s, data.dvc %s", row.number, row.kind, len(records),
                 row.source, md5)  # fmt: skip
        return md5, commit


class RoundExporter:
    """The data side of a round: collect, then filter and version (redone by ``resume`` after a crash).

    ``collector`` starts new rounds; ``readers`` (by kind) finish any kind a crash left half-way, so
    a chat round left ``exporting`` is finished by the next cycle even if that one generates.
    """

    def __init__(
        self,
        store: ChatStore,
        collector: Collector,
        select: RoundFilter,
        version: DataVersioner,
        readers: dict[str, Collector] | None = None,
    ):
        self.store = store
        self.collector = collector
        self.filter = select
        self.version = version
        self.readers = {**(readers or {}), collector.kind: collector}

    def export(self, up_to: int | None = None) -> RoundRow | None:
        """A new round over the material collected up to ``up_to``; None when there is none."""
        number = self.collector.collect(self.store, up_to)
        return None if number is None else self._finish(number)

    def resume(self) -> list[RoundRow]:
        """Finish the rounds a crash left between the store and the DVC version."""
        return [self._finish(r.number) for r in self.store.rounds(RoundStatus.EXPORTING)]

    def _finish(self, number: int) -> RoundRow:
        row = self.store.round(number)
        reader = self.readers.get(row.kind)
        if reader is None:
            raise HamdamError(
                f"Round {number} (kind '{row.kind}') was left half-exported, and this process has no "
                f"collector for that kind. Run the command that makes {row.kind} rounds once to finish it."
            )
        records = self.filter(reader.candidates(self.store, number))
        md5, commit = self.version(row, records)
        self.store.mark_versioned(number, len(records), md5, commit)
        return self.store.round(number)

"""Learning rounds, data side: eligible turns -> an immutable source under data/rounds/ -> a DVC version.

Crash-safe order: the round and the turns it takes are recorded in the chat store in one
transaction first; the data file, ``dvc add data`` and the git commit follow and are redone on the
next start if the process died in between (``resume``). The file's bytes depend only on the stored
turns, so redoing a step writes the same version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hamdam.data.normalize import normalize_text
from hamdam.data.quality import QualityFilter
from hamdam.data.records import Dialogue, Turn
from hamdam.data.versioning import dvc_add_data, git_commit_data_dvc
from hamdam.io import write_atomic_text
from hamdam.learning.store import ChatStore, StoredTurn, _now
from hamdam.safety.detector import LayeredDetector
from hamdam.safety.pii import scrub

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundInfo:
    number: int
    source: str
    records: int
    status: str
    data_md5: str | None
    git_commit: str | None


def round_record(turn: StoredTurn) -> dict:
    """A training record from a turn: PII scrubbed; a /fix replaces the reply and makes it human-written."""
    reply = turn.fixed_reply or turn.reply
    return {
        "instruction": scrub(normalize_text(turn.message)),
        "response": scrub(normalize_text(reply)),
        "origin": "human" if turn.fixed_reply else "chat",
        "turn_id": turn.id,
    }


class RoundExporter:
    def __init__(
        self,
        store: ChatStore,
        root: Path,
        quality: QualityFilter,
        include_unrated: bool = True,
        safety: LayeredDetector | None = None,
    ):
        self.store = store
        self.root = Path(root)
        self.quality = quality
        self.include_unrated = include_unrated
        self.safety = safety

    def _records(self, turns: list[StoredTurn]) -> list[dict]:
        kept = []
        for turn in turns:
            record = round_record(turn)
            dialogue = Dialogue((Turn("user", record["instruction"]), Turn("assistant", record["response"])))
            # Model-written replies pass the filters generated data passes; a /fix is the user's own text.
            if record["origin"] == "chat" and self.quality.reject(dialogue):
                continue
            if self.safety is not None and self._unsafe(record):
                continue
            kept.append(record)
        return kept

    def _unsafe(self, record: dict) -> bool:
        """A reply the output guard withholds (a /fix included: it teaches the persona), or a crisis or
        concern message, is never learned, whatever the chat's guard decided when the turn was stored."""
        harm = self.safety.unsafe_reply(record["response"])
        if harm is None:
            level = self.safety.classify(record["instruction"]).level
            harm = None if level == "none" else f"{level} message"
        if harm is None:
            return False
        log.info("turn %d kept out of the round by the safety checks (%s)", record["turn_id"], harm)
        return True

    def export(self, up_to: int | None = None) -> RoundInfo | None:
        """Take the eligible turns (up to turn ``up_to``) into a new round; None when there are none."""
        turns = self.store.eligible(self.include_unrated, up_to)
        if not turns:
            return None
        with self.store.transaction() as db:
            number = (db.execute("SELECT COALESCE(MAX(id), 0) FROM rounds").fetchone()[0]) + 1
            source = f"rounds/{number:04d}.jsonl"
            db.execute(
                "INSERT INTO rounds(id, created_at, source, records, status) VALUES (?, ?, ?, 0, 'exporting')",
                (number, _now(), source),
            )
            db.executemany("UPDATE turns SET round_id = ? WHERE id = ?", [(number, t.id) for t in turns])
        return self._version(number)

    def resume(self) -> list[RoundInfo]:
        """Finish rounds a crash left between the store and the DVC version."""
        pending = [r[0] for r in self.store.db.execute("SELECT id FROM rounds WHERE status = 'exporting' ORDER BY id")]
        return [self._version(number) for number in pending]

    def _version(self, number: int) -> RoundInfo:
        rows = self.store.db.execute(
            "SELECT id, session_id, message, reply, kind, lang, rating, fixed_reply FROM turns WHERE round_id = ? "
            "ORDER BY id",
            (number,),
        ).fetchall()
        records = self._records([StoredTurn(*row) for row in rows])
        source = f"rounds/{number:04d}.jsonl"
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
        write_atomic_text(self.root / "data" / source, text)
        md5 = dvc_add_data(self.root)
        commit = git_commit_data_dvc(self.root, f"data: learning round {number} ({len(records)} records)")
        with self.store.transaction() as db:
            db.execute(
                "UPDATE rounds SET records = ?, status = 'versioned', data_md5 = ?, git_commit = ? WHERE id = ?",
                (len(records), md5, commit, number),
            )
        log.info("round %d: %d records in data/%s, data.dvc %s", number, len(records), source, md5)
        return RoundInfo(number, source, len(records), "versioned", md5, commit)

    def rounds(self) -> list[RoundInfo]:
        rows = self.store.db.execute(
            "SELECT id, source, records, status, data_md5, git_commit FROM rounds ORDER BY id"
        ).fetchall()
        return [RoundInfo(*row) for row in rows]

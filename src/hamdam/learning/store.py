"""The chat store: every completed turn in SQLite (WAL), committed before the reply is shown.

Why SQLite in WAL mode with synchronous=FULL: one file, no server, and a committed transaction
survives the process being killed at any instant (kill -9 included), so no completed turn is ever
lost, unlike the seed's rewritten new_chats.json. Chat text stays in this local file; it is
never logged and never sent to MLflow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    model_dir TEXT,
    forgotten INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    created_at TEXT NOT NULL,
    message TEXT NOT NULL,
    reply TEXT NOT NULL,
    kind TEXT NOT NULL,              -- model | crisis | concern | identity | replaced
    lang TEXT NOT NULL,
    rating TEXT,                     -- good | bad | NULL
    fixed_reply TEXT,                -- /fix: the reply to learn instead
    round_id INTEGER                 -- the learning round that used this turn
);
CREATE INDEX IF NOT EXISTS turns_pending ON turns(round_id) WHERE round_id IS NULL;
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    source TEXT NOT NULL,            -- data/rounds/NNNN.jsonl
    records INTEGER NOT NULL,
    status TEXT NOT NULL,            -- exporting | versioned
    data_md5 TEXT,                   -- data.dvc's hash of data/ after this round
    git_commit TEXT
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoredTurn:
    id: int
    session_id: int
    message: str
    reply: str
    kind: str
    lang: str
    rating: str | None
    fixed_reply: str | None


class ChatStore:
    """One connection per store; each write is its own committed transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One committed (or, on error, rolled-back) write transaction."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def start_session(self, model_dir: str | None) -> int:
        with self.transaction() as db:
            return db.execute(
                "INSERT INTO sessions(started_at, model_dir) VALUES (?, ?)", (_now(), model_dir)
            ).lastrowid

    def add_turn(self, session_id: int, message: str, reply: str, kind: str, lang: str) -> int:
        with self.transaction() as db:
            return db.execute(
                "INSERT INTO turns(session_id, created_at, message, reply, kind, lang) VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, _now(), message, reply, kind, lang),
            ).lastrowid

    def rate(self, turn_id: int, rating: str) -> None:
        if rating not in ("good", "bad"):
            raise ValueError(f"rating must be good or bad, got {rating!r}")
        with self.transaction() as db:
            db.execute("UPDATE turns SET rating = ? WHERE id = ?", (rating, turn_id))

    def fix(self, turn_id: int, better_reply: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE turns SET fixed_reply = ?, rating = 'good' WHERE id = ?", (better_reply, turn_id))

    def forget_session(self, session_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE sessions SET forgotten = 1 WHERE id = ?", (session_id,))

    def completed_turns(self, session_id: int | None = None) -> int:
        query, args = "SELECT COUNT(*) FROM turns", ()
        if session_id is not None:
            query, args = query + " WHERE session_id = ?", (session_id,)
        return self.db.execute(query, args).fetchone()[0]

    def eligible(self, include_unrated: bool = True, up_to: int | None = None) -> list[StoredTurn]:
        """Turns a round may learn from: not yet used, not /bad, not forgotten, not crisis.

        Only ordinary model turns qualify (not crisis, identity or withheld replies); an unrated
        one only when ``include_unrated`` (the seed learned from every reply).
        """
        rows = self.db.execute(
            """
            SELECT t.id, t.session_id, t.message, t.reply, t.kind, t.lang, t.rating, t.fixed_reply
            FROM turns t JOIN sessions s ON s.id = t.session_id
            WHERE t.round_id IS NULL AND s.forgotten = 0 AND t.kind = 'model'
              AND (t.rating IS NULL OR t.rating = 'good') AND t.id <= ?
            ORDER BY t.id
            """,
            (up_to if up_to is not None else 2**62,),
        ).fetchall()
        turns = [StoredTurn(*row) for row in rows]
        return [t for t in turns if include_unrated or t.rating == "good"]

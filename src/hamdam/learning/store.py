"""The chat store: every completed turn in SQLite (WAL), committed before the reply is shown, and
the learning rounds made of them. Every query on these tables lives here.

Why SQLite in WAL mode with synchronous=FULL: one file, no server, and a committed transaction
survives the process being killed at any instant (kill -9 included), so no completed turn is ever
lost, unlike the seed's rewritten new_chats.json. Chat text stays in this local file; it is
never logged and never sent to MLflow.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path

from hamdam.persona.card import PersonaHeader


class RoundStatus(StrEnum):
    """Where a round is. A crash leaves it where it was; the next cycle carries it on from there."""

    EXPORTING = "exporting"  # recorded with its turns; data file, DVC version or commit still to write
    VERSIONED = "versioned"  # data/ versioned (DVC + git); to be trained
    FAILED = "failed"  # its retrain failed; trained again with the next round
    PROMOTED = "promoted"  # trained, passed the gate, served
    EMPTY = "empty"  # versioned, but nothing in it passed the filters: nothing to train
    REJECTED = "rejected"  # trained, failed the gate; its data stays versioned (generated: never replayed)


TO_TRAIN = (RoundStatus.VERSIONED, RoundStatus.FAILED)
UNFINISHED = (RoundStatus.EXPORTING, *TO_TRAIN)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    model_dir TEXT,
    forgotten INTEGER NOT NULL DEFAULT 0,
    client_id TEXT,                  -- hamdam serve: the session id its clients send (X-Session-ID)
    learn INTEGER NOT NULL DEFAULT 1 -- 0: a served session without --learn; never training data
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
    round_id INTEGER,                -- the learning round that used this turn
    card TEXT,                       -- the persona card it was answered as (personas/NAME.yaml)
    relation TEXT,                   -- the persona header: who spoke (the card's, or detected)
    listener TEXT                    -- ... and to whom (NULL: only the relation was known)
);
CREATE INDEX IF NOT EXISTS turns_pending ON turns(round_id) WHERE round_id IS NULL;
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    source TEXT NOT NULL,            -- rounds/NNNN.jsonl (chat) or generated/NNNN.jsonl, under data/
    records INTEGER NOT NULL,
    status TEXT NOT NULL,            -- {" | ".join(RoundStatus)}
    data_md5 TEXT,                   -- data.dvc's hash of data/ after this round
    git_commit TEXT,
    kind TEXT NOT NULL DEFAULT 'chat',  -- chat | import | generated: where its records came from
    base_dir TEXT,                   -- the model it was trained from (the champion then)
    model_dir TEXT,                  -- the model its training wrote
    ppl_before REAL,                 -- held-out perplexity of base_dir
    ppl_after REAL,                  -- held-out perplexity of model_dir
    report TEXT                      -- JSON: what the round's filters dropped, by filter (generated)
);
-- The samples a ``generated`` round wrote (prompt: who wrote the user message, human or model).
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    round_id INTEGER NOT NULL REFERENCES rounds(id),
    prompt TEXT NOT NULL,
    reply TEXT NOT NULL,
    prompt_origin TEXT NOT NULL,     -- human | model
    relation TEXT,                   -- the persona header it was generated under, if any
    listener TEXT,
    card TEXT
);
-- Persona cards retired by `hamdam persona retire`: their turns are never learned again.
CREATE TABLE IF NOT EXISTS retired_cards (
    card TEXT PRIMARY KEY,
    retired_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_round ON samples(round_id);
-- Diversity of a model's replies on the fixed evaluation prompts, measured once per model.
CREATE TABLE IF NOT EXISTS diversity (
    model_dir TEXT NOT NULL,
    prompts TEXT NOT NULL,           -- fingerprint of the prompt file, subset and sampling seed
    distinct_1 REAL NOT NULL,
    distinct_2 REAL NOT NULL,
    mean_words REAL NOT NULL,
    PRIMARY KEY (model_dir, prompts)
);
-- Held-out perplexity of a model, measured once (at its gate) per held-out subset.
CREATE TABLE IF NOT EXISTS scores (
    model_dir TEXT NOT NULL,
    heldout TEXT NOT NULL,           -- fingerprint of the held-out file and subset
    perplexity REAL NOT NULL,
    low REAL NOT NULL,               -- 95% bootstrap interval over dialogues
    high REAL NOT NULL,
    tokens INTEGER NOT NULL,
    PRIMARY KEY (model_dir, heldout)
);
"""

# Columns added after the first release: stores written then are upgraded in place.
_SESSION_COLUMNS = {"client_id": "TEXT", "learn": "INTEGER NOT NULL DEFAULT 1"}
_TURN_ADDED = {"card": "TEXT", "relation": "TEXT", "listener": "TEXT"}
_SAMPLE_ADDED = {"relation": "TEXT", "listener": "TEXT", "card": "TEXT"}
_ROUND_COLUMNS = {
    "kind": "TEXT NOT NULL DEFAULT 'chat'",
    "base_dir": "TEXT",
    "model_dir": "TEXT",
    "ppl_before": "REAL",
    "ppl_after": "REAL",
    "report": "TEXT",
}


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
    card: str | None = None
    relation: str | None = None
    listener: str | None = None

    @property
    def persona(self) -> PersonaHeader | None:
        """The header this turn was answered under (forms of address are the card's, not stored)."""
        return PersonaHeader.stored(self.relation, self.listener, self.card)


@dataclass(frozen=True)
class RoundRow:
    number: int
    kind: str
    source: str
    records: int
    status: RoundStatus
    data_md5: str | None
    git_commit: str | None
    base_dir: str | None = None
    model_dir: str | None = None
    ppl_before: float | None = None
    ppl_after: float | None = None
    report: str | None = None


@dataclass(frozen=True)
class GeneratedSample:
    prompt: str
    reply: str
    prompt_origin: str  # human | model
    relation: str | None = None  # the persona header it was generated under
    listener: str | None = None
    card: str | None = None


@dataclass(frozen=True)
class Diversity:
    """How varied a model's replies are (distinct-n, Li et al. 2016) and how long, on fixed prompts."""

    distinct_1: float
    distinct_2: float
    mean_words: float


@dataclass(frozen=True)
class Score:
    """A held-out perplexity with its 95% interval (bootstrap over dialogues) and token count."""

    perplexity: float
    low: float
    high: float
    tokens: int


_TURN_COLUMNS = (
    "t.id, t.session_id, t.message, t.reply, t.kind, t.lang, t.rating, t.fixed_reply, t.card, t.relation, t.listener"
)
_NOT_RETIRED = "(t.card IS NULL OR t.card NOT IN (SELECT card FROM retired_cards))"
_ROUND_SELECT = (
    "SELECT id, kind, source, records, status, data_md5, git_commit, base_dir, model_dir, ppl_before, ppl_after, "
    "report FROM rounds"
)


def _round(row: tuple) -> RoundRow:
    number, kind, source, records, status, *rest = row
    return RoundRow(number, kind, source, records, RoundStatus(status), *rest)


class ChatStore:
    """One connection per store; each write is its own committed transaction.

    The file holds what people told the companion: it is created 0600 (SQLite gives its WAL the
    same mode), in a folder created 0700."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            self.path.parent.mkdir(mode=0o700, parents=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        if self.path.stat().st_mode & 0o077:
            os.chmod(self.path, 0o600)  # a store created by an older hamdam
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        added = (("sessions", _SESSION_COLUMNS), ("rounds", _ROUND_COLUMNS), ("turns", _TURN_ADDED),
                 ("samples", _SAMPLE_ADDED))  # fmt: skip
        for table, columns in added:
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for column, declaration in columns.items():
                if column not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS sessions_client ON sessions(client_id)")

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

    # --- sessions and turns -------------------------------------------------------------------

    def start_session(self, model_dir: str | None, client_id: str | None = None, learn: bool = True) -> int:
        with self.transaction() as db:
            return db.execute(
                "INSERT INTO sessions(started_at, model_dir, client_id, learn) VALUES (?, ?, ?, ?)",
                (_now(), model_dir, client_id, int(learn)),
            ).lastrowid

    def session_of(self, client_id: str) -> int | None:
        """The stored session a client's session id names, if any."""
        row = self.db.execute("SELECT id FROM sessions WHERE client_id = ?", (client_id,)).fetchone()
        return row[0] if row else None

    def session_turns(self, session_id: int) -> list[StoredTurn]:
        """A session's turns in order: what a served conversation continues from after a restart."""
        rows = self.db.execute(
            f"SELECT {_TURN_COLUMNS} FROM turns t WHERE t.session_id = ? ORDER BY t.id", (session_id,)
        )
        return [StoredTurn(*row) for row in rows.fetchall()]

    def add_turn(
        self, session_id: int, message: str, reply: str, kind: str, lang: str, persona: PersonaHeader | None = None
    ) -> int:
        """A completed turn, committed; with the persona header it was answered under."""
        who = (persona.card, persona.relation, persona.listener) if persona else (None, None, None)
        with self.transaction() as db:
            return db.execute(
                "INSERT INTO turns(session_id, created_at, message, reply, kind, lang, card, relation, listener) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, _now(), message, reply, kind, lang, *who),
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

    def last_turn_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM turns").fetchone()[0]

    def eligible(self, include_unrated: bool = True, up_to: int | None = None) -> list[StoredTurn]:
        """Turns a round may learn from: not yet used, not /bad, not forgotten, not crisis, not
        answered as a retired persona.

        Only ordinary model turns qualify (not crisis, identity or withheld replies); an unrated
        one only when ``include_unrated`` (the seed learned from every reply).
        """
        rows = self.db.execute(
            f"""
            SELECT {_TURN_COLUMNS}
            FROM turns t JOIN sessions s ON s.id = t.session_id
            WHERE t.round_id IS NULL AND s.forgotten = 0 AND s.learn = 1 AND t.kind = 'model'
              AND (t.rating IS NULL OR t.rating = 'good') AND t.id <= ? AND {_NOT_RETIRED}
            ORDER BY t.id
            """,
            (up_to if up_to is not None else 2**62,),
        ).fetchall()
        turns = [StoredTurn(*row) for row in rows]
        return [t for t in turns if include_unrated or t.rating == "good"]

    def round_turns(self, number: int) -> list[StoredTurn]:
        rows = self.db.execute(f"SELECT {_TURN_COLUMNS} FROM turns t WHERE t.round_id = ? ORDER BY t.id", (number,))
        return [StoredTurn(*row) for row in rows.fetchall()]

    # --- rounds -------------------------------------------------------------------------------

    def open_round(
        self,
        kind: str,
        turn_ids: Iterable[int] = (),
        samples: Iterable[GeneratedSample] = (),
        report: str | None = None,
        folder: str = "rounds",
    ) -> int:
        """A new round (``exporting``) with the turns or samples it takes, in one transaction; its
        data file will be ``data/<folder>/NNNN.jsonl``. Returns its number."""
        with self.transaction() as db:
            number = db.execute("SELECT COALESCE(MAX(id), 0) FROM rounds").fetchone()[0] + 1
            db.execute(
                "INSERT INTO rounds(id, created_at, source, records, status, kind, report) "
                "VALUES (?, ?, ?, 0, ?, ?, ?)",
                (number, _now(), f"{folder}/{number:04d}.jsonl", RoundStatus.EXPORTING, kind, report),
            )
            db.executemany("UPDATE turns SET round_id = ? WHERE id = ?", [(number, t) for t in turn_ids])
            db.executemany(
                "INSERT INTO samples(round_id, prompt, reply, prompt_origin, relation, listener, card) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(number, s.prompt, s.reply, s.prompt_origin, s.relation, s.listener, s.card) for s in samples],
            )
        return number

    def round_samples(self, number: int) -> list[GeneratedSample]:
        rows = self.db.execute(
            "SELECT prompt, reply, prompt_origin, relation, listener, card FROM samples WHERE round_id = ? ORDER BY id",
            (number,),
        )
        return [GeneratedSample(*row) for row in rows.fetchall()]

    def chat_messages(self) -> list[tuple[str, PersonaHeader | None]]:
        """What people wrote in ordinary turns they did not take back (/bad, /forget), not to a
        retired persona, with the header each was answered under: human prompts."""
        rows = self.db.execute(
            f"""
            SELECT t.message, t.card, t.relation, t.listener FROM turns t JOIN sessions s ON s.id = t.session_id
            WHERE s.forgotten = 0 AND s.learn = 1 AND t.kind = 'model' AND (t.rating IS NULL OR t.rating = 'good')
              AND {_NOT_RETIRED}
            ORDER BY t.id
            """
        )
        return [(m, PersonaHeader(r, who, card=c) if r else None) for m, c, r, who in rows.fetchall()]

    # --- persona cards ------------------------------------------------------------------------

    def retire_card(self, card: str, delete: bool = False) -> int:
        """Never learn from the turns answered as ``card`` again; with ``delete``, remove those turns
        (what was said to it) from this store as well. Returns the turns deleted."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO retired_cards(card, retired_at) VALUES (?, ?)", (card, _now()))
            if not delete:
                return 0
            db.execute("DELETE FROM samples WHERE card = ?", (card,))
            return db.execute("DELETE FROM turns WHERE card = ?", (card,)).rowcount

    def retired_cards(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT card FROM retired_cards")}

    def mark_versioned(self, number: int, records: int, data_md5: str | None, git_commit: str | None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE rounds SET records = ?, status = ?, data_md5 = ?, git_commit = ? WHERE id = ?",
                (records, RoundStatus.VERSIONED, data_md5, git_commit, number),
            )

    def set_status(self, numbers: Iterable[int], status: RoundStatus) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE rounds SET status = ? WHERE id = ?", [(status, n) for n in numbers])

    def record_training(
        self, numbers: Iterable[int], status: RoundStatus, base_dir: str, model_dir: str, before: float, after: float
    ) -> None:
        """The outcome of training ``numbers`` together: the gate's decision and what it compared."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE rounds SET status = ?, base_dir = ?, model_dir = ?, ppl_before = ?, ppl_after = ? WHERE id = ?",
                [(status, base_dir, model_dir, before, after, n) for n in numbers],
            )

    def rounds(self, *statuses: RoundStatus) -> list[RoundRow]:
        """Rounds in order, all or those in ``statuses``."""
        if not statuses:
            return [_round(r) for r in self.db.execute(f"{_ROUND_SELECT} ORDER BY id")]
        marks = ", ".join("?" for _ in statuses)
        rows = self.db.execute(f"{_ROUND_SELECT} WHERE status IN ({marks}) ORDER BY id", tuple(statuses))
        return [_round(r) for r in rows]

    def round(self, number: int) -> RoundRow | None:
        row = self.db.execute(f"{_ROUND_SELECT} WHERE id = ?", (number,)).fetchone()
        return None if row is None else _round(row)

    def has_unfinished_rounds(self) -> bool:
        return bool(self.rounds(*UNFINISHED))

    def reference_model(self) -> str | None:
        """The first model learning started from: the gate bounds drift against it."""
        row = self.db.execute("SELECT base_dir FROM rounds WHERE base_dir IS NOT NULL ORDER BY id LIMIT 1").fetchone()
        return None if row is None else row[0]

    # --- held-out scores ----------------------------------------------------------------------

    def score(self, model_dir: str, heldout: str) -> Score | None:
        row = self.db.execute(
            "SELECT perplexity, low, high, tokens FROM scores WHERE model_dir = ? AND heldout = ?", (model_dir, heldout)
        ).fetchone()
        return None if row is None else Score(*row)

    def diversity(self, model_dir: str, prompts: str) -> Diversity | None:
        row = self.db.execute(
            "SELECT distinct_1, distinct_2, mean_words FROM diversity WHERE model_dir = ? AND prompts = ?",
            (model_dir, prompts),
        ).fetchone()
        return None if row is None else Diversity(*row)

    def save_diversity(self, model_dir: str, prompts: str, diversity: Diversity) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO diversity(model_dir, prompts, distinct_1, distinct_2, mean_words) "
                "VALUES (?, ?, ?, ?, ?)",
                (model_dir, prompts, diversity.distinct_1, diversity.distinct_2, diversity.mean_words),
            )

    def save_score(self, model_dir: str, heldout: str, score: Score) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO scores(model_dir, heldout, perplexity, low, high, tokens) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (model_dir, heldout, score.perplexity, score.low, score.high, score.tokens),
            )

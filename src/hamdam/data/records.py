"""Dialogue records: the seed's ``dataset.json``, JSONL of the same, and multi-turn records
(``.conv`` corpora are read by ``hamdam.data.conv``).

Accepted record shapes (one per JSON array element or JSONL line)::

    {"instruction": "...", "response": "..."}                      # the seed's pairs
    {"turns": [{"role": "user", "text": "..."},
               {"role": "assistant", "text": "..."}, ...]}          # multi-turn

A multi-turn record alternates user/assistant, starts with the user and ends with the assistant.
Every text is normalized (``normalize_text``) on the way in. Any problem stops the load before
training and names the file, the record and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hamdam.data.normalize import normalize_text
from hamdam.errors import DataError
from hamdam.io import utf16_hint

Role = Literal["user", "assistant"]
ROLES: tuple[Role, Role] = ("user", "assistant")


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str


@dataclass(frozen=True)
class Dialogue:
    """One training example: alternating turns ending with the assistant's reply; and, when known,
    who speaks (``persona``: the loved one's relation to the user) and to whom (``listener``)."""

    turns: tuple[Turn, ...]
    persona: str | None = None
    listener: str | None = None

    @property
    def first_user_text(self) -> str:
        return self.turns[0].text

    def texts(self) -> Iterator[str]:
        for turn in self.turns:
            yield turn.text

    def to_record(self) -> dict[str, Any]:
        who = {k: v for k, v in (("persona", self.persona), ("listener", self.listener)) if v}
        if len(self.turns) == 2:
            return {"instruction": self.turns[0].text, "response": self.turns[1].text, **who}
        return {"turns": [{"role": t.role, "text": t.text} for t in self.turns], **who}


_SHAPES = (
    'Each record must be {"instruction": "...", "response": "..."} or '
    '{"turns": [{"role": "user", "text": "..."}, {"role": "assistant", "text": "..."}, ...]}.'
)


def _fail(where: str, problem: str) -> DataError:
    return DataError(f"{where}: {problem} {_SHAPES} Fix or remove that record and run again.")


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"field '{field}' must be a string, got {type(value).__name__}.")
    text = normalize_text(value)
    if not text:
        raise _fail(where, f"field '{field}' is empty.")
    return text


def _who(record: dict[str, Any], where: str) -> dict[str, str]:
    """The optional ``persona`` and ``listener`` fields: a pair of the corpus's relations, or absent."""
    from hamdam.persona.card import RELATIONS

    persona, listener = record.get("persona"), record.get("listener")
    if persona is None and listener is None:
        return {}
    if persona not in RELATIONS or (listener is not None and listener not in RELATIONS[persona]):
        raise DataError(
            f"{where}: persona={persona!r}, listener={listener!r} is not a pair hamdam knows: persona is one of "
            f"{', '.join(RELATIONS)}, and the listener one of that persona's ({', '.join(RELATIONS.get(persona, ()))}"
            "). Fix the fields or remove them, and run again."
        )
    return {"persona": persona, "listener": listener}


def parse_record(record: Any, where: str) -> Dialogue:
    """Turn one decoded JSON value into a Dialogue, or raise a DataError naming ``where``."""
    if not isinstance(record, dict):
        raise _fail(where, f"expected a JSON object, got {type(record).__name__}.")
    who = _who(record, where)
    if "turns" in record:
        raw = record["turns"]
        if not isinstance(raw, list) or not raw:
            raise _fail(where, "field 'turns' must be a non-empty list.")
        turns = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or "role" not in item or "text" not in item:
                raise _fail(where, f"turn {i + 1} must be an object with 'role' and 'text'.")
            expected = ROLES[i % 2]
            if item["role"] != expected:
                raise _fail(
                    where,
                    f"turn {i + 1} has role {item['role']!r} but {expected!r} was expected "
                    "(turns alternate user/assistant, starting with the user).",
                )
            turns.append(Turn(expected, _text(item["text"], where, f"turns[{i}].text")))
        if turns[-1].role != "assistant":
            raise _fail(where, "the last turn must be the assistant's reply.")
        return Dialogue(tuple(turns), **who)
    missing = [k for k in ("instruction", "response") if k not in record]
    if missing:
        raise _fail(where, f"missing field(s) {', '.join(repr(m) for m in missing)}.")
    return Dialogue(
        (
            Turn("user", _text(record["instruction"], where, "instruction")),
            Turn("assistant", _text(record["response"], where, "response")),
        ),
        **who,
    )


def iter_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, decoded JSON value)`` for each record of a ``.json`` array or ``.jsonl`` file."""
    path = Path(path)
    if path.is_dir():
        raise DataError(
            f"Data file '{path}' is a folder. Point the setting (for training data: data.path=) at a .json, "
            ".jsonl or .conv file of dialogue records, and run again."
        )
    if not path.is_file():
        raise DataError(
            f"Data file '{path}' does not exist. Check the path given in the config or on the "
            "command line (for training data: data.path=/path/to/records.jsonl); a .json array "
            "or .jsonl file of dialogue records is expected."
        )
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        hint = utf16_hint(raw[:4096]) or "Save it as UTF-8 and run again."
        raise DataError(f"Data file '{path}' is not valid UTF-8 (byte {err.start}). {hint}") from None
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"Data file '{path}', line {lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{where}: not valid JSON ({err.msg} at column {err.colno}). Each line of a "
                    ".jsonl file must hold one complete JSON object; fix that line and run again."
                ) from None
        return
    try:
        value = json.loads(content)
    except json.JSONDecodeError as err:
        raise DataError(
            f"Data file '{path}' is not valid JSON: {err.msg} at line {err.lineno}, column "
            f"{err.colno}. The file must be one JSON array of records (or use .jsonl with one "
            "record per line); fix it and run again."
        ) from None
    if not isinstance(value, list):
        raise DataError(
            f"Data file '{path}' must hold a JSON array of records, got a "
            f"{type(value).__name__}. Wrap the records in [ ... ] and run again."
        )
    for i, item in enumerate(value):
        yield f"Data file '{path}', record {i + 1}", item


def load_dialogues(path: str | Path) -> list[Dialogue]:
    """Read a ``.json`` array or ``.jsonl`` file of records (every record validated), or a ``.conv`` corpus."""
    if Path(path).suffix == ".conv":
        from hamdam.data.conv import ConvReader  # conv builds on this module

        dialogues = list(ConvReader().read(path))
    else:
        dialogues = [parse_record(value, where) for where, value in iter_records(path)]
    if not dialogues:
        raise DataError(f"Data file '{path}' holds no records. Add dialogue records and run again.")
    return dialogues

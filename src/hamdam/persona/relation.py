"""The relation of a session without a persona card, read from how the user addresses the loved one
in their first messages (بابا، مامان، dad, 妈妈 ...), as the seed's later version did; kept for the
session once found."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import yaml

from hamdam.persona.address import forms_pattern

RELATIONS_FILE = Path(__file__).with_name("relations.yaml")


@cache
def _lexicon() -> tuple[dict[str, set[str]], object]:
    table = yaml.safe_load(RELATIONS_FILE.read_text(encoding="utf-8"))
    relations_of: dict[str, set[str]] = {}
    for relation, languages in table.items():
        for forms in languages.values():
            for form in forms:
                relations_of.setdefault(form.lower(), set()).add(relation)
    return relations_of, forms_pattern(relations_of)


def detect_relation(messages: Iterable[str], first: int = 3) -> str | None:
    """The relation the user's first ``first`` messages point to, or None when they name none or
    several equally (a form shared by two relations counts for neither)."""
    relations_of, pattern = _lexicon()
    votes: Counter[str] = Counter()
    for message in list(messages)[:first]:
        for match in pattern.finditer(message.lower()):
            found = relations_of[match.group(0)]
            if len(found) == 1:
                votes[next(iter(found))] += 1
    ranked = votes.most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]

"""Persona consistency: does a reply address the user as who they are to the persona?

A grieving son must not be called دخترم, nor a mother آبجی, nor a son داداش. The forms of address
come from the corpus's persona sources (``corpus/grief_fa/personas.yaml``: for each loved one and
each listener, the words the loved one calls them by), as the listener roles each form is used for.
A reply *misfits* when it addresses the user with a form used only for other listeners; forms used
for three or more listener roles (عزیزم, بابا جان) are endearments that say nothing of who the
user is. Only vocatives count: a form at the start or end of a sentence or set off by a comma
(«دخترم، ...», «... پسرم.»), not a mention in the middle of one («به مامان بگو»). A reply is
*addressed* when it uses a telling form at all; one without any contradicts nothing.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from hamdam.persona.address import forms_pattern

GENERIC_ROLES = 3  # a form used for this many listener roles or more is an endearment, not a role
_BEFORE = re.compile(r"(?:^|[.!?؟،,:;\n»«\"])\s*$")
_AFTER = re.compile(r"^\s*(?:$|[.!?؟،,:;\n»«\"])")


@dataclass(frozen=True)
class Consistency:
    consistency: float  # share of replies with no form of address that misfits the pair
    addressed: float  # share of replies that address the user at all
    replies: int
    misfits: tuple[tuple[int, str], ...]  # (index, the misfitting form), for a person to read


class AddressLexicon:
    """Telling form of address -> the listener roles it is used for."""

    def __init__(self, roles_by_form: dict[str, set[str]]):
        self.roles_by_form = {f: r for f, r in roles_by_form.items() if len(r) < GENERIC_ROLES}
        self.pattern = forms_pattern(roles_by_form)  # endearments are matched too, so no shorter form hides in one

    @classmethod
    def from_personas(cls, path: str | Path) -> AddressLexicon:
        personas = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        roles: dict[str, set[str]] = {}
        for spec in personas.values():
            for listener, forms in spec["listeners"].items():
                for form in forms:
                    roles.setdefault(form, set()).add(listener)
        return cls(roles)

    def forms(self, reply: str) -> list[str]:
        """The telling forms ``reply`` addresses the user with (vocatives only)."""
        found = []
        for match in self.pattern.finditer(reply):
            form = match.group(0)
            vocative = _BEFORE.search(reply[: match.start()]) or _AFTER.search(reply[match.end() :])
            if form in self.roles_by_form and vocative:
                found.append(form)
        return found

    def misfit(self, reply: str, listener: str | Collection[str]) -> str | None:
        """The first form in ``reply`` that addresses someone other than ``listener`` (or than any of
        the listeners given: a relation without its listener), if any."""
        allowed = {listener} if isinstance(listener, str) else set(listener)
        for form in self.forms(reply):
            if not allowed & self.roles_by_form[form]:
                return form
        return None


def persona_consistency(
    lexicon: AddressLexicon, replies: Sequence[str], listeners: Sequence[str | Collection[str] | None]
) -> Consistency:
    """Over the replies whose listener is known (None: unknown, left out); a set of listeners where
    only the relation is given (a father's son or daughter)."""
    scored = misfits = addressed = 0
    examples = []
    for index, (reply, listener) in enumerate(zip(replies, listeners, strict=True)):
        if listener is None:
            continue
        scored += 1
        addressed += bool(lexicon.forms(reply))
        form = lexicon.misfit(reply, listener)
        if form is not None:
            misfits += 1
            examples.append((index, form))
    if not scored:
        return Consistency(float("nan"), float("nan"), 0, ())
    return Consistency(1 - misfits / scored, addressed / scored, scored, tuple(examples))

"""A persona card: the loved one the companion speaks as, written by the family (``personas/``).

The card says who they were to the user (``relation``, ``listener``: the corpus's pairs), the words
they called the user by and the user called them by, how they spoke, a few facts and sayings, and
the consent behind it: who gave the words, when, and who may talk to the persona. A retired card
is kept (with its farewell) but never served.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from hamdam.errors import HamdamError

if TYPE_CHECKING:
    from hamdam.data.chat_format import ChatFormat

# Who the loved one was -> who the user can be to them (the corpus's pairs, corpus/grief_fa/personas.yaml).
RELATIONS: dict[str, tuple[str, ...]] = {
    "father": ("son", "daughter"),
    "mother": ("son", "daughter"),
    "brother": ("brother", "sister"),
    "sister": ("brother", "sister"),
    "husband": ("wife",),
    "wife": ("husband",),
    "son": ("mother", "father"),
    "daughter": ("mother", "father"),
    "grandfather": ("grandson", "granddaughter"),
    "grandmother": ("grandson", "granddaughter"),
    "friend": ("friend",),
}
CONSENT_ROLES = ("donor", "family")


class PersonaError(HamdamError):
    """A persona card that cannot be used as written."""


@dataclass(frozen=True)
class PersonaHeader:
    """What a conversation's persona header says: who speaks (``relation``), to whom (``listener``,
    None when only the relation is known: detected from the user's words), with what forms of
    address (a card's; empty: the model's own), and the card it came from, if any."""

    relation: str
    listener: str | None = None
    forms: tuple[str, ...] = ()
    card: str | None = None

    @classmethod
    def stored(cls, relation: str | None, listener: str | None, card: str | None) -> PersonaHeader | None:
        """The header kept as columns of a turn or sample, or as fields of a record (the forms of
        address are the card's and not kept); None where no relation was known."""
        return cls(relation, listener, card=card) if relation else None

    def columns(self) -> tuple[str, str | None, str | None]:
        """``(relation, listener, card)``: how the chat store keeps it."""
        return self.relation, self.listener, self.card

    def record_fields(self) -> dict[str, str]:
        """A training record's ``persona`` and ``listener``, and the ``card`` it was said to (what
        ``hamdam persona retire --delete`` removes), where known."""
        fields = {"persona": self.relation, "listener": self.listener, "card": self.card}
        return {k: v for k, v in fields.items() if v}

    def token_ids(self, chat_format: ChatFormat) -> list[int]:
        """The header as the model reads it, before the user's turn."""
        return chat_format.header(self.relation, self.listener, self.forms or None)


@dataclass(frozen=True)
class Consent:
    """Who gave the words: the ``donor`` (the person themself, while alive) or a ``family`` member
    who imported them; when; and who may talk to the persona."""

    given_by: str
    role: str
    date: str
    may_talk: tuple[str, ...] = ()


@dataclass(frozen=True)
class Retirement:
    date: str
    farewell: str


@dataclass(frozen=True)
class PersonaCard:
    name: str  # the card's file name: what `persona=NAME` takes
    display_name: str
    relation: str
    listener: str
    addresses_user: tuple[str, ...]  # how they called the user: پسرم، بابا جان
    user_calls_them: tuple[str, ...]  # how the user calls them: بابا، بابا جون
    language: str = "fa"
    gender: str | None = None  # male | female, for Persian agreement where it matters
    register: str = ""  # how they spoke: dialect, formality
    facts: tuple[str, ...] = ()
    sayings: tuple[str, ...] = ()
    greetings: tuple[str, ...] = ()  # how they opened a conversation
    sign_offs: tuple[str, ...] = ()  # how they ended one
    imports: tuple[str, ...] = ()  # their imported words (data/imports/...): deleted with `retire --delete`
    consent: Consent | None = None
    retired: Retirement | None = None

    @property
    def active(self) -> bool:
        return self.retired is None

    @property
    def header(self) -> PersonaHeader:
        return PersonaHeader(self.relation, self.listener, self.addresses_user, self.name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def card(name: str, **spec: Any) -> PersonaCard:
    """A card from its config (``personas/NAME.yaml``), checked: every problem in one paragraph."""
    where = f"persona card '{name}' (personas/{name}.yaml)"
    problems = []
    relation, listener = spec.get("relation"), spec.get("listener")
    if relation not in RELATIONS:
        problems.append(f"relation is {relation!r}, not one of {', '.join(RELATIONS)}")
    elif listener not in RELATIONS[relation]:
        problems.append(f"listener is {listener!r}; a {relation}'s listener is one of {', '.join(RELATIONS[relation])}")
    for key in ("display_name",):
        if not isinstance(spec.get(key), str) or not spec.get(key, "").strip():
            problems.append(f"{key} is missing")
    for key in ("addresses_user", "user_calls_them"):
        value = spec.get(key)
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            problems.append(f"{key} needs at least one form of address")
    if spec.get("gender") not in (None, "male", "female"):
        problems.append(f"gender is {spec.get('gender')!r}, not male, female or null")
    consent = spec.get("consent")
    if consent is not None:
        if consent.get("role") not in CONSENT_ROLES:
            problems.append(f"consent.role is {consent.get('role')!r}, not donor or family")
        if not consent.get("given_by"):
            problems.append("consent.given_by is missing (who gave the words)")
        try:
            dt.date.fromisoformat(str(consent.get("date")))
        except ValueError:
            problems.append(f"consent.date is {consent.get('date')!r}, not a date like 2026-11-26")
    if problems:
        raise PersonaError(f"The {where} cannot be used: " + "; ".join(problems) + ". Fix the card and run again.")
    retired = spec.get("retired")
    return PersonaCard(
        name=name,
        display_name=spec["display_name"].strip(),
        relation=relation,
        listener=listener,
        addresses_user=tuple(spec["addresses_user"]),
        user_calls_them=tuple(spec["user_calls_them"]),
        language=spec.get("language") or "fa",
        gender=spec.get("gender"),
        register=spec.get("register") or "",
        facts=tuple(spec.get("facts") or ()),
        sayings=tuple(spec.get("sayings") or ()),
        greetings=tuple(spec.get("greetings") or ()),
        sign_offs=tuple(spec.get("sign_offs") or ()),
        imports=tuple(spec.get("imports") or ()),
        consent=Consent(
            consent["given_by"], consent["role"], str(consent["date"]), tuple(consent.get("may_talk") or ())
        )
        if consent
        else None,  # fmt: skip
        retired=Retirement(str(retired["date"]), retired["farewell"]) if retired else None,
    )


def corpus_addresses(path: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """(persona, listener) -> how the persona addresses them, from the corpus's ``personas.yaml``."""
    from pathlib import Path

    import yaml

    personas = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return {
        (persona, listener): tuple(forms)
        for persona, spec in personas.items()
        for listener, forms in spec["listeners"].items()
    }

"""``hamdam persona from-import PATH --speaker NAME``: a persona card proposed from the loved one's
own messages, for the family to read and edit.

The file is read as ``hamdam data import`` reads it (a chat export with ``--format``, where the
speaker's messages are the replies; or an imported source under ``data/imports/``). From it:

- how they addressed the user: the forms of address (the corpus's, ``corpus/grief_fa/personas.yaml``)
  most frequent in the speaker's messages;
- how the user addressed them, and from that the relation (``detect_relation`` over the others'
  messages): the listener is the one whose forms the speaker used most;
- greetings and sign-offs: the openings and endings of the speaker's messages that recur.

Nothing here is final: the card is written with a note that it is a proposal, and every field can
be changed before it is used.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hamdam.data.records import Dialogue
from hamdam.persona.address import forms_pattern
from hamdam.persona.card import RELATIONS, PersonaError
from hamdam.persona.commands import draft, new_card_path, write_card
from hamdam.persona.relation import detect_relation

log = logging.getLogger(__name__)

_WORDS = re.compile(r"[^\W\d_][\w\u200c]*", re.UNICODE)


def count_forms(texts: Iterable[str], forms: Iterable[str]) -> Counter[str]:
    """How often each form of address occurs (as whole words) in ``texts``."""
    wanted = {f.lower(): f for f in forms}
    pattern = forms_pattern(wanted)
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(wanted[m.group(0)] for m in pattern.finditer(text.lower()))
    return counts


def recurring(texts: Iterable[str], first: bool, words: int = 2, min_count: int = 2, top: int = 3) -> list[str]:
    """The openings (``first``) or endings of messages that recur at least ``min_count`` times."""
    counts: Counter[str] = Counter()
    for text in texts:
        found = _WORDS.findall(text)
        if len(found) > words:
            counts[" ".join(found[:words] if first else found[-words:])] += 1
    return [phrase for phrase, n in counts.most_common(top) if n >= min_count]


def propose(dialogues: list[Dialogue], personas: dict) -> dict:
    """The card's relation, listener and forms of address from the speaker's dialogues."""
    speaker = [t.text for d in dialogues for t in d.turns[1::2]]
    others = [t.text for d in dialogues for t in d.turns[0::2]]
    relation = detect_relation(others, first=len(others))
    called = count_forms(others, personas[relation]["addr"]) if relation else Counter()
    by_listener = {
        listener: count_forms(speaker, forms)
        for listener, forms in (personas[relation]["listeners"].items() if relation else ())
    }
    listener = max(by_listener, key=lambda k: sum(by_listener[k].values()), default=None)
    calls = by_listener.get(listener, Counter())
    return {
        "relation": relation,
        "listener": listener if listener and sum(calls.values()) else None,
        "addresses_user": [f for f, _ in calls.most_common(3)],
        "user_calls_them": [f for f, _ in called.most_common(3)],
        "greetings": recurring((d.turns[1].text for d in dialogues), first=True),
        "sign_offs": recurring((d.turns[-1].text for d in dialogues), first=False),
    }


def read_dialogues(cfg: DictConfig) -> list[Dialogue]:
    path = Path(str(cfg.path or "")).expanduser()
    if not path.is_file():
        raise PersonaError(f"'{path}' does not exist or is not a file. Give a chat export (with --format) or an "
                           "imported source (data/imports/*.jsonl).")  # fmt: skip
    spec = OmegaConf.to_container(cfg.importer, resolve=True)
    spec.pop("format")
    return list(instantiate(spec).read(path))


def from_import(cfg: DictConfig) -> Path:
    """Write ``personas/NAME.yaml`` proposed from the speaker's messages; never over a card."""
    name, target = new_card_path(cfg)
    dialogues = read_dialogues(cfg)
    if not Path(cfg.persona_forms).is_file():
        raise PersonaError(f"The forms of address to look for are read from {cfg.persona_forms}, which is not here. "
                           "Run from the hamdam checkout, or pass persona_forms=PATH to a personas.yaml.")  # fmt: skip
    personas = yaml.safe_load(Path(cfg.persona_forms).read_text(encoding="utf-8"))
    proposal = propose(dialogues, personas)
    relation = cfg.relation or proposal["relation"]
    listener = cfg.listener or proposal["listener"]
    if relation not in RELATIONS or listener not in RELATIONS[relation]:
        raise PersonaError(
            f"'{cfg.path}' does not show who {cfg.speaker or 'the speaker'} was to the user (found relation "
            f"{proposal['relation']!r}, listener {proposal['listener']!r}). Say it with --relation and --listener "
            f"(relations: {', '.join(RELATIONS)}), and run again."
        )
    if relation != proposal["relation"] or not proposal["addresses_user"]:
        proposal["addresses_user"] = list(personas[relation]["listeners"][listener][:2])
    if not proposal["user_calls_them"]:
        proposal["user_calls_them"] = list(personas[relation]["addr"][:2])
    source = Path(str(cfg.path))
    try:
        imported = [str(source.resolve().relative_to(Path(cfg.paths.root_dir).resolve()))]
    except ValueError:
        imported = []
    imports = [p for p in imported if p.startswith("data/imports/")]
    spec = draft(cfg, display_name=str(cfg.display_name or cfg.speaker or name), relation=relation, listener=listener,
                 addresses_user=proposal["addresses_user"], user_calls_them=proposal["user_calls_them"],
                 greetings=proposal["greetings"], sign_offs=proposal["sign_offs"], imports=imports)  # fmt: skip
    header = (
        f"# A PROPOSAL, read from {len(dialogues)} dialogue(s) of {source.name} by `hamdam persona from-import`:\n"
        "# the forms of address, greetings and sign-offs the messages show most. Read it, correct it, and add\n"
        "# gender, how they spoke (register), facts, sayings and who may talk to it (consent.may_talk).\n"
    )
    write_card(target, name, spec, header)
    sys.stdout.write(f"wrote {target}: {relation} -> {listener}, calls the user "
                     f"{'، '.join(spec['addresses_user'])}; edit it before use\n")  # fmt: skip
    return target

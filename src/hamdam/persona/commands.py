"""``hamdam persona list`` and ``hamdam persona show NAME``: the cards of this workspace, read only."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig

from hamdam.io import write_atomic_text
from hamdam.persona.card import PersonaCard, PersonaError, card


def load_cards(folder: Path) -> list[PersonaCard]:
    """Every card in ``folder`` (``personas/``), checked; a broken one is an error naming it."""
    return [_parse(path) for path in sorted(Path(folder).glob("*.yaml"))]


def _spec(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PersonaError(f"The persona card {path} cannot be read ({err}). Fix the YAML and run again.") from None
    if not isinstance(spec, dict):
        raise PersonaError(f"The persona card {path} must be a mapping of keys (display_name, relation, ...).")
    return spec


def _parse(path: Path) -> PersonaCard:
    return card(path.stem, **{k: v for k, v in _spec(path).items() if not k.startswith("_")})


def read_card(folder: Path, name: str) -> PersonaCard:
    """The card ``personas/NAME.yaml`` alone, checked."""
    path = Path(folder) / f"{name}.yaml"
    if not NAME.match(name) or not path.is_file():
        return find(folder, name)  # names the cards there
    return _parse(path)


def serving_card(folder: Path, name: str) -> PersonaCard:
    """The card ``persona=NAME`` serves; a retired one is refused with its farewell."""
    card_ = read_card(folder, name)
    if card_.retired:
        raise PersonaError(f"{card_.display_name} ({card_.name}) was retired on {card_.retired.date} and is no "
                           f"longer served. {card_.retired.farewell}")  # fmt: skip
    return card_


def find(folder: Path, name: str) -> PersonaCard:
    cards = load_cards(folder)
    for found in cards:
        if found.name == name:
            return found
    names = ", ".join(c.name for c in cards) or "none yet"
    raise PersonaError(f"No persona card '{name}' in {folder}. The cards here: {names} (`hamdam persona list`).")


def list_personas(cfg: DictConfig) -> list[PersonaCard]:
    cards = load_cards(Path(cfg.persona_dir))
    if cfg.json:
        sys.stdout.write(json.dumps([c.to_dict() for c in cards], ensure_ascii=False) + "\n")
        return cards
    sys.stdout.write(f"  {'name':<16} {'speaks as':<20} {'relation':<24} {'consent':<8} status\n")
    for c in cards:
        status = "active" if c.active else f"retired {c.retired.date}"
        consent = c.consent.role if c.consent else "none"
        pair = f"{c.relation} -> {c.listener}"
        sys.stdout.write(f"  {c.name:<16} {c.display_name:<20} {pair:<24} {consent:<8} {status}\n")
    return cards


def show_persona(cfg: DictConfig) -> PersonaCard:
    if not cfg.get("name"):
        raise PersonaError("Which persona? `hamdam persona show NAME`, with a name from `hamdam persona list`.")
    shown = find(Path(cfg.persona_dir), str(cfg.name))
    if cfg.json:
        sys.stdout.write(json.dumps(shown.to_dict(), ensure_ascii=False) + "\n")
        return shown
    lines = [
        f"{shown.display_name} ({shown.name}): {shown.relation}, speaking to their {shown.listener}",
        f"  calls the user: {'، '.join(shown.addresses_user)}",
        f"  is called: {'، '.join(shown.user_calls_them)}",
        f"  language: {shown.language}" + (f", {shown.gender}" if shown.gender else ""),
    ]
    if shown.register:
        lines.append(f"  how they spoke: {shown.register}")
    lines += [f"  fact: {fact}" for fact in shown.facts] + [f"  saying: {s}" for s in shown.sayings]
    if shown.greetings or shown.sign_offs:
        lines.append(
            f"  greetings: {'، '.join(shown.greetings) or '-'}; sign-offs: {'، '.join(shown.sign_offs) or '-'}"
        )
    lines += [f"  imported words: {path}" for path in shown.imports]
    if shown.consent:
        who = "the donor, while alive" if shown.consent.role == "donor" else "a family member"
        lines.append(f"  consent: given by {shown.consent.given_by} ({who}) on {shown.consent.date}; "
                     f"may talk to it: {'، '.join(shown.consent.may_talk) or 'not restricted'}")  # fmt: skip
    else:
        lines.append("  consent: NOT RECORDED (add consent: given_by, role, date, may_talk to the card)")
    lines.append(f"  status: retired on {shown.retired.date}" if shown.retired else "  status: active")
    if shown.retired:
        lines.append(f"  farewell: {shown.retired.farewell}")
    sys.stdout.write("\n".join(lines) + "\n")
    return shown


NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def new_card_path(cfg: DictConfig) -> tuple[str, Path]:
    """The name and file of a card to write (``cfg.name``): a valid name, and no card there yet."""
    name = str(cfg.name or "")
    if not NAME.match(name):
        raise PersonaError(f"The persona name {name!r} must be 1 to 64 letters, digits, '-' or '_' (it names the "
                           "file personas/NAME.yaml and `persona=NAME`).")  # fmt: skip
    path = Path(cfg.persona_dir) / f"{name}.yaml"
    if path.exists():
        raise PersonaError(f"{path} exists already. Edit it, or choose another name.")
    return name, path


def draft(cfg: DictConfig, **fields: object) -> dict:
    """A new card's keys: ``fields`` over empty ones for the family to fill, with today's consent by
    ``cfg.given_by`` (``cfg.consent_role``)."""
    consent = {"given_by": str(cfg.given_by or ""), "role": cfg.consent_role, "date": dt.date.today().isoformat(),
               "may_talk": []}  # fmt: skip
    empty = {"language": "fa", "gender": None, "register": "", "facts": [], "sayings": []}
    return {**empty, **fields, "consent": consent, "retired": None}


def write_card(path: Path, name: str, spec: dict, header: str) -> Path:
    """Check the card (every problem in one paragraph) before anything is written, then write it."""
    card(name, **spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_text(path, header + yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    return path


def new_persona(cfg: DictConfig) -> Path:
    """A new card, checked like any other before it is written; never over an existing one."""
    name, path = new_card_path(cfg)

    def forms(value: object) -> list[str]:
        return [f.strip() for f in str(value or "").replace("،", ",").split(",") if f.strip()]

    spec = draft(cfg, display_name=str(cfg.display_name or ""), relation=cfg.relation, listener=cfg.listener,
                 addresses_user=forms(cfg.calls_user), user_calls_them=forms(cfg.called))  # fmt: skip
    header = (
        f"# Persona card '{name}', written by `hamdam persona new`. Complete it: gender (male/female), how they\n"
        "# spoke (register), a few facts and memories, a few of their sayings, and who may talk to it\n"
        "# (consent.may_talk). `hamdam persona show " + name + "` shows it.\n"
    )
    write_card(path, name, spec, header)
    sys.stdout.write(f"wrote {path}\n")
    return path

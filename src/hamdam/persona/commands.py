"""``hamdam persona list`` and ``hamdam persona show NAME``: the cards of this workspace, read only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig

from hamdam.persona.card import PersonaCard, PersonaError, card


def load_cards(folder: Path) -> list[PersonaCard]:
    """Every card in ``folder`` (``conf/persona/``), checked; a broken one is an error naming it."""
    cards = []
    for path in sorted(Path(folder).glob("*.yaml")):
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise PersonaError(f"The persona card {path} cannot be read ({err}). Fix the YAML and run again.") from None
        if not isinstance(spec, dict):
            raise PersonaError(f"The persona card {path} must be a mapping of keys (display_name, relation, ...).")
        cards.append(card(path.stem, **{k: v for k, v in spec.items() if not k.startswith("_")}))
    return cards


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

"""``hamdam persona retire NAME``: a dignified end for a persona.

In this order, each step safe to redo (running the command again after a crash finishes it):

1. the card is marked retired, with its farewell: from then on chat and serve refuse it and show
   the farewell instead;
2. the chat store records the retirement: no turn said to it is learned by a later round, and no
   record of it is replayed or used as a self-generation prompt;
3. with ``delete``: every record of it under ``data/`` (its imports, and the chat and generated
   rounds' records said to it) is removed as a new DVC version of ``data/`` (a git commit of
   ``data.dvc``), and its turns are deleted from the chat store.

Older DVC versions keep what they held, in the cache, until ``dvc gc`` removes them; models trained
before keep what they learned. The command says both.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig

from hamdam.data.sources import KINDS
from hamdam.data.versioning import publish, require_dvc, staged_file
from hamdam.io import write_atomic_text
from hamdam.learning.store import ChatStore
from hamdam.persona.card import PersonaCard, PersonaError
from hamdam.persona.commands import read_card

log = logging.getLogger(__name__)

DEFAULT_FAREWELL = {
    "fa": "این گفت‌وگو به پایان رسیده است. یادشان در دل‌هایتان و در خاطره‌هایتان زنده است.",
    "en": "This conversation has come to its end. Their memory lives on in you and in what you shared.",
    "zh": "这段对话已经结束。他们的记忆留在你的心里，留在你们共同的回忆中。",
}


def retire(cfg: DictConfig) -> PersonaCard:
    if not cfg.get("name"):
        raise PersonaError("Which persona? `hamdam persona retire NAME`, with a name from `hamdam persona list`.")
    folder, name = Path(cfg.persona_dir), str(cfg.name)
    root = Path(cfg.paths.root_dir)
    if cfg.delete:
        require_dvc(root)  # before anything changes: the deletion must be able to make its version
    card = read_card(folder, name)
    if card.retired is None:
        farewell = str(cfg.farewell or DEFAULT_FAREWELL.get(card.language, DEFAULT_FAREWELL["fa"])).strip()
        mark_retired(folder / f"{name}.yaml", dt.date.today().isoformat(), farewell)
        card = read_card(folder, name)
    lines = [f"{card.display_name} ({name}) is retired as of {card.retired.date}: chat and serve no longer "
             f"answer as them, and show this farewell: {card.retired.farewell}"]  # fmt: skip
    store = ChatStore(cfg.store)
    try:
        store.retire_card(name)
        lines.append("Nothing said to them is learned by later rounds.")
        if cfg.delete:
            removed, files, md5, commit = delete_data(root, card)
            turns = store.retire_card(name, delete=True)
            lines.append(
                f"Deleted {removed} record(s) in {files} file(s) under data/ as a new data version (data.dvc md5 "
                f"{md5}" + (f", git commit {commit[:10]})" if commit else ")") + f", and {turns} stored chat turn(s)."
            )
            lines.append(
                "Earlier versions of data/ still hold them in the DVC cache (and a DVC remote, if pushed) until "
                "`dvc gc` removes them; models trained before this keep what they learned."
            )
    finally:
        store.close()
    sys.stdout.write("\n".join(lines) + "\n")
    return card


def mark_retired(path: Path, date: str, farewell: str) -> None:
    """Set the card's ``retired:`` block, keeping the rest of the file (comments included) as written."""
    text = path.read_text(encoding="utf-8")
    # The top-level `retired:` key and its indented lines, wherever it is.
    kept = re.sub(r"(?m)^retired:.*(?:\n(?:[ \t]+.*|[ \t]*))*\n?", "", text).rstrip("\n")
    block = yaml.safe_dump({"retired": {"date": date, "farewell": farewell}}, allow_unicode=True, sort_keys=False)
    write_atomic_text(path, kept + "\n" + block)


def delete_data(root: Path, card: PersonaCard) -> tuple[int, int, str | None, str | None]:
    """Every record of ``card`` out of ``data/`` (its listed imports whole; elsewhere the records
    marked with it), as one new version. Returns (records, files changed, md5, commit)."""
    data = root / "data"
    imports = {(root / p).resolve() for p in card.imports}
    moves: dict[Path, Path] = {}
    removals: list[Path] = []
    removed = 0
    for kind in KINDS:
        folder = data / kind
        for path in sorted(folder.glob("*.json*")) if folder.is_dir() else ():
            lines = path.read_text(encoding="utf-8").splitlines()
            if path.resolve() in imports:
                removed += sum(1 for line in lines if line.strip())
                removals.append(path)
                continue
            if path.suffix != ".jsonl":
                continue
            keep = [line for line in lines if not line.strip() or json.loads(line).get("card") != card.name]
            if len(keep) == len(lines):
                continue
            removed += len(lines) - len(keep)
            if not any(line.strip() for line in keep):
                removals.append(path)
                continue
            with staged_file(root, path.name) as (out, staged):
                out.write("\n".join(keep) + "\n")
            moves[staged] = path
    md5, commit = publish(root, moves, f"data: delete the words of retired persona {card.name}", removals)
    log.info("retired persona %s: %d records deleted from data/ (data.dvc %s)", card.name, removed, md5)
    return removed, len(moves) + len(removals), md5, commit

"""``hamdam data import``: one file becomes a new source under ``data/imports/`` and a DVC version.

The source's name carries a hash of the file and of the import settings, so importing the same
file the same way again finds it and changes nothing. The source is streamed to a file in the
workspace's staging folder and moved into place only when complete, under the version lock (see
``hamdam.data.versioning``): a bad file, or a kill, leaves nothing half-written in ``data/``. If the
process dies after the move, running the import again finishes the DVC version. Imported chats are
private: the file is 0600 and its folder 0700.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from hamdam.data.versioning import publish, require_dvc, staged_file
from hamdam.errors import DataError
from hamdam.safety.pii import scrub_dialogue

log = logging.getLogger(__name__)


def import_key(path: Path, settings: dict[str, Any]) -> str:
    """12 hex digits of sha256 over the file's bytes and the settings that shape the records."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode())
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def source_name(path: Path, key: str) -> str:
    stem = re.sub(r"[^\w\-]+", "-", path.stem).strip("-")[:40] or "import"
    return f"{stem}-{key}.jsonl"


def import_source(cfg: DictConfig) -> Path:
    """Import ``cfg.path`` with ``cfg.importer``; returns the source file under ``cfg.dest_dir``."""
    spec: dict[str, Any] = OmegaConf.to_container(cfg.importer, resolve=True)
    fmt = spec.pop("format")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DataError(f"'{path}' does not exist or is not a file. Check the path and run again.")
    root = Path(cfg.paths.root_dir)
    require_dvc(root)
    if cfg.speaker and "speaker" not in spec:
        log.warning("--speaker is ignored for --format %s: its records already say who replies", fmt)
    if spec.get("speaker"):  # --speaker matches without case, so "Mom" and "mom" import the same
        spec["speaker"] = str(spec["speaker"]).strip().casefold()
    card = None
    if cfg.get("persona"):
        from hamdam.persona.commands import serving_card

        card = serving_card(Path(cfg.persona_dir), str(cfg.persona))  # a retired card takes no new words
    persona = {"persona": card.name} if card else {}
    key = import_key(path, {"format": fmt, "scrub_pii": bool(cfg.scrub_pii), **spec, **persona})
    dest_dir = Path(cfg.dest_dir)
    existing = sorted(dest_dir.glob(f"*-{key}.jsonl")) if dest_dir.is_dir() else []
    moves: dict[Path, Path] = {}
    if existing:
        target = existing[0]
        summary = f"'{path}' is already imported as {_shown(target, root)}; nothing new to add"
    else:
        target = dest_dir / source_name(path, key)
        reader = instantiate(spec)
        count = 0
        with staged_file(root, target.name) as (out, staged):
            for dialogue in reader.read(path):
                if cfg.scrub_pii:
                    dialogue = scrub_dialogue(dialogue)
                record = dialogue.to_record()
                if card is not None:  # the card's header, and its name: retiring it can delete these
                    record.update(persona=card.relation, listener=card.listener, card=card.name)
                out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
            if count == 0:
                raise DataError(
                    f"'{path}' gave no complete exchange to learn from ({reader.stats.summary()}). "
                    "Nothing was imported; check the file and --format"
                    + (" and --speaker." if "speaker" in spec else ".")
                )
        moves[staged] = target
        summary = f"Imported '{path}' ({fmt}) as {_shown(target, root)}: {reader.stats.summary()}"
    md5, commit = publish(root, moves, f"data: import {target.name}")
    summary += f"\ndata.dvc md5 {md5}" + (f", git commit {commit[:10]}" if commit else "")
    log.info("%s", summary.replace("\n", "; "))
    sys.stdout.write(summary + "\n")
    return target


def _shown(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)

"""Which model the learning rounds serve: the ``champion`` pointer under the runs directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hamdam.models.export import read_latest, write_pointer

CHAMPION_FILE = "champion.json"


def champion_dir(runs_dir: Path) -> Path:
    """The model being served: the last promoted one, else the last trained one."""
    pointer = Path(runs_dir) / CHAMPION_FILE
    if pointer.is_file():
        return Path(json.loads(pointer.read_text(encoding="utf-8"))["model_dir"])
    return read_latest(Path(runs_dir))


def serve(runs_dir: Path, model_dir: Path, info: dict[str, Any]) -> None:
    """Make ``model_dir`` the champion: ``hamdam chat`` answers with it from its next turn on."""
    write_pointer(Path(runs_dir) / CHAMPION_FILE, model_dir, info)

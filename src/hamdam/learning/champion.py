"""Which model ``hamdam chat`` serves: ``champion.json`` under the runs directory, else the pipeline's.

Only an explicit choice moves it: ``hamdam use``, ``hamdam chat --learn model_dir=...``, a round the
gate promotes, and ``hamdam rollback``. Training never does (``runs/latest.json`` only records the
newest trained model), so a smoke or random-weight model is never served by surprise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hamdam.errors import ModelLoadError
from hamdam.models.export import LATEST_FILE, read_latest, write_pointer

CHAMPION_FILE = "champion.json"
# The DVC pipeline's model, beside the runs directory: served until something else is chosen.
PIPELINE_MODEL = Path("pipeline") / "model"


def pipeline_model(runs_dir: Path) -> Path:
    return Path(runs_dir).parent / PIPELINE_MODEL


def served(runs_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The served model and the record of why (``{"default": "pipeline"}`` when nothing was chosen)."""
    pointer = Path(runs_dir) / CHAMPION_FILE
    if pointer.is_file():
        info = json.loads(pointer.read_text(encoding="utf-8"))
        return Path(info.pop("model_dir")), info
    default = pipeline_model(runs_dir)
    if (default / "hamdam.json").is_file():
        return default, {"default": "pipeline"}
    # A workspace without the DVC pipeline (`hamdam init`): the model its latest `hamdam train` wrote.
    latest = read_latest(runs_dir) if (Path(runs_dir) / LATEST_FILE).is_file() else None
    if latest is not None and (latest / "hamdam.json").is_file():
        return latest, {"default": "latest"}
    raise ModelLoadError(
        f"No model is served yet: there is no {pointer}, no pipeline model at {default} and no model "
        "trained here. Run `hamdam train` (in a checkout, `make run` trains the pipeline model), or "
        "choose one: `hamdam models` lists them and `hamdam use NAME` serves one, or pass "
        "model_dir=/path/to/model."
    )


def champion_dir(runs_dir: Path) -> Path:
    """The model being served (see ``served``)."""
    return served(runs_dir)[0]


def serve(runs_dir: Path, model_dir: Path, info: dict[str, Any]) -> None:
    """Make ``model_dir`` the served model: ``hamdam chat`` answers with it from its next turn on."""
    write_pointer(Path(runs_dir) / CHAMPION_FILE, model_dir, info)


def unserve(runs_dir: Path) -> None:
    """Back to the default (the pipeline's model)."""
    (Path(runs_dir) / CHAMPION_FILE).unlink(missing_ok=True)


def why(info: dict[str, Any]) -> str:
    """The reason a model is served, in words."""
    if info.get("default") == "latest":
        return "the latest model `hamdam train` wrote, nothing else being chosen"
    if info.get("default"):
        return "the pipeline's model (nothing else chosen)"
    if info.get("rollback") is not None:
        return f"hamdam rollback {info.get('round', '?')}"
    if info.get("round") is not None:
        return f"promoted by learning round {info['round']}"
    if info.get("chosen"):
        return str(info["chosen"])
    return "chosen earlier"

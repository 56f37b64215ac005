"""``hamdam models`` and ``hamdam use MODEL``: the trained models of a workspace, and which one is served.

``models`` only reads: the pipeline's model, each training run's, each learning round's, with what
made it, its held-out perplexity where one was measured, and the served one marked with the reason.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig

from hamdam.errors import ModelLoadError
from hamdam.learning.champion import pipeline_model, serve, served, why
from hamdam.models.export import read_latest, read_meta


@dataclass
class ModelEntry:
    name: str  # what `hamdam use` takes
    path: str
    made_by: str
    model_name: str
    heldout_ppl: float | None
    served: bool = False


def _read(store: Path, sql: str) -> list[tuple]:
    """Rows from the chat store, opened read-only: a missing store (or table) is no rows, never a new file."""
    if not store.is_file():
        return []
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:
            return []


def _heldout_ppl(folder: Path) -> float | None:
    """The perplexity on the whole held-out set its training measured (``heldout.json`` beside it);
    the gate's subset figures are another set and are not mixed in."""
    try:
        return float(json.loads((folder.parent / "heldout.json").read_text(encoding="utf-8"))["ppl"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _rounds(store: Path) -> dict[str, tuple[int, str, str]]:
    """model_dir -> (round, kind, status)."""
    rows = _read(store, "SELECT id, kind, status, model_dir FROM rounds WHERE model_dir IS NOT NULL")
    return {model_dir: (number, kind, status) for number, kind, status, model_dir in rows}


def catalog(runs_dir: Path, store: Path) -> list[ModelEntry]:
    runs_dir = Path(runs_dir)
    rounds = _rounds(store)
    entries: list[ModelEntry] = []

    def add(name: str, folder: Path, made_by: str) -> None:
        if not (folder / "hamdam.json").is_file():
            return
        try:
            meta = json.loads((folder / "hamdam.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        key = str(folder.resolve())
        entries.append(ModelEntry(name, key, made_by, str(meta.get("model_name", "?")), _heldout_ppl(folder)))

    pipeline = pipeline_model(runs_dir)
    metrics = pipeline.parent / "metrics.json"
    add("pipeline", pipeline, "the DVC pipeline (dvc repro)")
    if entries and metrics.is_file():
        entries[-1].heldout_ppl = entries[-1].heldout_ppl or json.loads(metrics.read_text())["eval_perplexity"]
    for folder in sorted(runs_dir.glob("*/model"), key=lambda p: p.stat().st_mtime):
        add(folder.parent.name, folder, "hamdam train")
    for folder in sorted((runs_dir / "rounds").glob("[0-9]*/model")):
        number, kind, status = rounds.get(str(folder.resolve()), (int(folder.parent.name), "?", "?"))
        add(f"round-{number}", folder, f"learning round {number} ({kind}, {status})")
    try:
        current, _ = served(runs_dir)
    except ModelLoadError:
        current = None
    for entry in entries:
        entry.served = current is not None and Path(entry.path) == current.resolve()
    return entries


def models(cfg: DictConfig) -> list[ModelEntry]:
    runs_dir = Path(cfg.paths.runs_dir)
    entries = catalog(runs_dir, Path(cfg.learning.store))
    try:
        current, info = served(runs_dir)
        serving = f"served: {current} ({why(info)})"
    except ModelLoadError:
        serving = "served: nothing yet (`make run` trains the pipeline's model; `hamdam use NAME` picks one)"
    if cfg.json:
        sys.stdout.write(json.dumps([asdict(e) for e in entries], ensure_ascii=False) + "\n")
        return entries
    sys.stdout.write(f"  {'name':<28} {'model':<16} {'held-out ppl':>12}  made by\n")
    for e in entries:
        ppl = "-" if e.heldout_ppl is None else f"{e.heldout_ppl:.2f}"
        sys.stdout.write(f"{'*' if e.served else ' '} {e.name:<28} {e.model_name:<16} {ppl:>12}  {e.made_by}\n")
    sys.stdout.write(serving + "\n")
    return entries


def resolve(name: str, runs_dir: Path) -> Path:
    """A model folder from what a user types: a path, ``pipeline``, ``latest``, a run's name, ``round-N``."""
    runs_dir = Path(runs_dir)
    if name == "pipeline":
        return pipeline_model(runs_dir)
    if name == "latest":
        return read_latest(runs_dir)
    if name.startswith("round-") and name[6:].isdigit():
        return runs_dir / "rounds" / f"{int(name[6:]):04d}" / "model"
    path = Path(name).expanduser()
    if (path / "hamdam.json").is_file() or (path / "model" / "hamdam.json").is_file():
        return path if (path / "hamdam.json").is_file() else path / "model"
    return runs_dir / name / "model"


def use(cfg: DictConfig) -> Path:
    """Serve the model ``cfg.name`` names from the next chat turn on."""
    if not cfg.get("name"):
        raise ModelLoadError("Which model? `hamdam use NAME`, with a name from `hamdam models` (or a model folder).")
    runs_dir = Path(cfg.paths.runs_dir)
    folder = resolve(str(cfg.name), runs_dir)
    if not (folder / "hamdam.json").is_file():
        names = ", ".join(e.name for e in catalog(runs_dir, Path(cfg.learning.store))) or "none yet"
        raise ModelLoadError(f"`hamdam use {cfg.name}`: {folder} is not a model folder. The models here: {names} "
                             "(`hamdam models`), or pass the path of a folder with a hamdam.json.")  # fmt: skip
    read_meta(folder)  # a model folder hamdam will load, or the reason it will not
    serve(runs_dir, folder, {"chosen": f"hamdam use {cfg.name}"})
    sys.stdout.write(f"serving {folder.resolve()} from the next chat turn on\n")
    return folder

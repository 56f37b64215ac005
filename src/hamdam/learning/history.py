"""``hamdam rounds`` and ``hamdam rollback N``: what each learning round did, and going back to one.

Rollback is real: data.dvc is restored from the round's git commit and ``dvc checkout`` brings
data/ back byte for byte from the DVC cache (``dvc pull`` first on a machine without it); the
round's model becomes the one ``hamdam chat`` serves. Both work offline and after a restart: the
chat store, git and DVC hold everything they need.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from hamdam.data.versioning import data_dvc_md5
from hamdam.errors import HamdamError
from hamdam.io import write_atomic_text
from hamdam.learning.champion import serve, served, unserve
from hamdam.learning.store import ChatStore, RoundStatus


def _mlflow_runs(tracking_uri: str) -> dict[str, dict]:
    """round number -> its finished run: id and held-out perplexity before and after."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return {}  # nothing tracked yet; opening the URI would create the database
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return {}
    query = "tags.`hamdam.round` != '' and attributes.status = 'FINISHED'"
    return {
        r.data.tags["hamdam.round"]: {
            "mlflow_run": r.info.run_id,
            "ppl_before": r.data.metrics.get("gate/ppl_before"),
            "ppl_after": r.data.metrics.get("gate/ppl_after"),
        }
        for r in client.search_runs(experiments, query)
    }


def _ppl(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rounds(cfg: DictConfig) -> list[dict]:
    """Read-only: a workspace without a chat store or MLflow database gets an empty table, and no files."""
    rows = []
    if Path(cfg.learning.store).is_file():
        store = ChatStore(cfg.learning.store)
        try:
            rows = store.rounds()
        finally:
            store.close()
    runs = _mlflow_runs(cfg.tracking_uri)
    none = {"mlflow_run": None, "ppl_before": None, "ppl_after": None}
    table = []
    for r in rows:
        run = runs.get(str(r.number), none)
        table.append({
            "round": r.number, "kind": r.kind, "source": r.source, "records": r.records, "status": str(r.status),
            "data_md5": r.data_md5, "git_commit": r.git_commit, "mlflow_run": run["mlflow_run"],
            # The store holds what the gate compared; MLflow, for rounds gated before it did.
            "ppl_before": r.ppl_before if r.ppl_before is not None else run["ppl_before"],
            "ppl_after": r.ppl_after if r.ppl_after is not None else run["ppl_after"],
            "model_dir": r.model_dir,
        })  # fmt: skip
    if cfg.json:
        sys.stdout.write(json.dumps(table) + "\n")
    else:
        sys.stdout.write(
            f"{'round':>5}  {'kind':<9} {'records':>7}  {'status':<9} {'ppl before':>10} {'ppl after':>10}  "
            f"{'data.dvc md5':<36} {'git':<8} mlflow run\n"
        )
        for r in table:
            sys.stdout.write(
                f"{r['round']:>5}  {r['kind']:<9} {r['records']:>7}  {r['status']:<9} {_ppl(r['ppl_before']):>10} "
                f"{_ppl(r['ppl_after']):>10}  {r['data_md5'] or '-':<36} {(r['git_commit'] or '-')[:8]:<8} "
                f"{r['mlflow_run'] or '-'}\n"
            )
    return table


def rollback(cfg: DictConfig) -> None:
    number = cfg.round
    if number is None:
        raise HamdamError("Which round? Run `hamdam rollback N` (see `hamdam rounds` for the numbers).")
    root = Path(cfg.paths.root_dir)
    if not Path(cfg.learning.store).is_file():
        raise HamdamError(
            f"No learning rounds are recorded here ({cfg.learning.store} does not exist), so there is no round "
            f"{number} to restore. Run hamdam from the workspace where `hamdam chat --learn` ran."
        )
    store = ChatStore(cfg.learning.store)
    try:
        row = store.round(max(number, 1))  # 0: from before round 1
    finally:
        store.close()
    if row is None or row.git_commit is None:
        raise HamdamError(
            f"Round {max(number, 1)} has no recorded data version (unknown round, or the workspace is not a git "
            "repository). `hamdam rounds` lists the rounds that can be restored."
        )
    revision = f"{row.git_commit}~1" if number == 0 else row.git_commit
    shown = subprocess.run(["git", "-C", str(root), "show", f"{revision}:data.dvc"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise HamdamError(f"The data version before round 1 is not in this git history ({shown.stderr.strip()}).")
    write_atomic_text(root / "data.dvc", shown.stdout)
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.checkout(targets=[str(root / "data.dvc")], force=True)
    # The model served after round N: its own if the gate promoted it, else the one it was trained from.
    runs_dir = Path(cfg.paths.runs_dir)
    model = row.model_dir if number > 0 and row.status == RoundStatus.PROMOTED else row.base_dir
    if model and (Path(model) / "hamdam.json").is_file():
        serve(runs_dir, Path(model), {"round": number, "rollback": True})
    elif number == 0:
        unserve(runs_dir)
    try:
        current: Path | str = served(runs_dir)[0]
    except HamdamError:
        current = "nothing (`hamdam use NAME` picks a model)"
    md5 = data_dvc_md5(shown.stdout) or "?"
    when = "from before round 1" if number == 0 else f"round {number}'s version"
    sys.stdout.write(f"data/ is {when} ({md5}); serving {current}\n")

"""What goes into each MLflow run besides Lightning's metrics: params, tags, artifacts, status.

The run itself is Lightning's ``MLFlowLogger`` (configured by ``conf/logger``), so metrics are
logged from rank 0 only and a crash inside ``fit`` marks the run FAILED. Every rank builds the logger
(under torchrun each runs ``hamdam train``), but only rank 0's opens a run: Lightning's creates it on
rank 0 only, and everything here that writes to the store is ``rank_zero_only``. A SIGKILL leaves no chance
to mark anything, so every run hamdam opens records its process (``owner_tags``), and every command
that opens a run first marks KILLED the runs whose process is gone (``close_dead_runs``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import psutil
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def flatten_config(cfg: DictConfig) -> dict[str, Any]:
    """``{"model.lora.r": 16, ...}`` from the resolved config; lists stay whole values."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_state(root: Path) -> dict[str, str]:
    """The workspace's commit and whether it had uncommitted changes; empty outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "hamdam.git_dirty": str(bool(dirty)).lower()}


# Runs are grouped by purpose (``experiment_name``): single training runs, sweeps, the pipeline, and
# learning (chat sessions, selfgen loops and the rounds nested under them).
TRAIN_EXPERIMENT = "train"
SWEEPS_EXPERIMENT = "sweeps"
ROUNDS_EXPERIMENT = "rounds"


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def mlflow_logger(parent_run: str | None = None, tags: dict[str, str] | None = None, **kwargs: Any) -> MLFlowLogger:
    """Lightning's MLFlowLogger, its run nested under ``parent_run`` when given (a searched sweep's
    study run: ``logger.parent_run``)."""
    tags = dict(tags or {})
    if parent_run:
        tags["mlflow.parentRunId"] = str(parent_run)
    # On every rank: Lightning's MLFlowLogger opens the store (a client) on every rank, and under
    # torchrun the ranks would otherwise race to create a new SQLite store's tables.
    prepare_store(kwargs.get("tracking_uri"))
    return MLFlowLogger(tags=tags or None, **kwargs)


def prepare_store(tracking_uri: str | None) -> None:
    """Create (or upgrade) a SQLite tracking store under a file lock: MLflow builds its tables on
    first use, and two jobs doing that at once (a sweep's parallel launcher) collide ("duplicate
    column name")."""
    if not tracking_uri or not str(tracking_uri).startswith("sqlite:///"):
        return
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    path = Path(str(tracking_uri).removeprefix("sqlite:///"))
    if not path.is_absolute():
        path = Path.cwd() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        MlflowClient(tracking_uri=str(tracking_uri)).search_experiments(max_results=1)


def experiment_name(cfg: DictConfig) -> str:
    """``logger.experiment_name``, else by purpose: the jobs of ``-m`` in "sweeps", others in "train"."""
    return str(cfg.logger.get("experiment_name") or (SWEEPS_EXPERIMENT if _multirun() else TRAIN_EXPERIMENT))


def experiment_id(client: Any, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with the workspace's artifact store) if new."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def run_name(cfg: DictConfig) -> str:
    """The MLflow run's name: ``run_name``, and in a sweep the job's number and its overrides, so the
    jobs of ``-m model.lora.r=4,8`` are told apart (``smoke-20261126-0930-1-model.lora.r=8``)."""
    name = str(cfg.logger.get("run_name") or cfg.run_name)
    if not _multirun():
        return name
    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get().job
    # Paths and the study's run id are noise in a name.
    swept = ",".join(o for o in job.override_dirname.split(",") if o and "/" not in o and "parent_run=" not in o)
    return f"{name}-{job.num}" + (f"-{swept}" if swept else "")[:200]


def owner_tags() -> dict[str, str]:
    """The process that owns a run: host, pid and the pid's start time (pids are reused)."""
    return {
        "hamdam.host": socket.gethostname(),
        "hamdam.pid": str(os.getpid()),
        "hamdam.pid_started": f"{psutil.Process().create_time():.2f}",
    }


def _owner_alive(tags: dict[str, str]) -> bool:
    try:
        process = psutil.Process(int(tags["hamdam.pid"]))
        started = float(tags.get("hamdam.pid_started", "nan"))
        return not abs(process.create_time() - started) > 1.0  # nan (unknown start) counts as the same
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return True


def close_dead_runs(client: Any) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process is gone; returns their ids.

    Runs of other hosts are left alone: their processes cannot be seen from here."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.`hamdam.host` = '{host}'"
    closed = []
    for run in client.search_runs(experiments, query, max_results=1000):
        tags = run.data.tags
        if _owner_alive(tags):
            continue
        client.set_tag(run.info.run_id, "hamdam.error", f"process {tags.get('hamdam.pid')} on {host} was killed")
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning("MLflow run %s (%s) was left RUNNING by a killed process; marked KILLED",
                    run.info.run_id, run.info.run_name)  # fmt: skip
        closed.append(run.info.run_id)
    return closed


@rank_zero_only
def log_run_start(logger: MLFlowLogger, cfg: DictConfig, data_path: Path, tags: dict[str, str]) -> None:
    close_dead_runs(logger.experiment)
    logger.log_hyperparams(flatten_config(cfg))
    all_tags = {
        **owner_tags(),
        "hamdam.data_path": str(data_path),
        "hamdam.data_sha256": file_sha256(data_path),
        "hamdam.model": str(cfg.model.name),
        "hamdam.safety_enabled": str(bool(cfg.get("safety", {}).get("enabled", True))).lower(),
        **git_state(Path(cfg.paths.root_dir)),
        **tags,
    }
    for key, value in all_tags.items():
        logger.experiment.set_tag(logger.run_id, key, value)
    log.info("MLflow run %s in %s", logger.run_id, cfg.logger.tracking_uri)


@rank_zero_only
def log_run_outputs(logger: MLFlowLogger, config_file: Path, model_dir: Path) -> None:
    logger.experiment.log_artifact(logger.run_id, str(config_file))
    logger.experiment.log_artifacts(logger.run_id, str(model_dir), artifact_path="model")
    logger.experiment.set_tag(logger.run_id, "hamdam.model_dir", str(Path(model_dir).resolve()))


@rank_zero_only
def mark_failed(logger: MLFlowLogger, error: BaseException) -> None:
    logger.experiment.set_tag(logger.run_id, "hamdam.error", f"{type(error).__name__}: {error}"[:5000])
    logger.experiment.set_terminated(logger.run_id, "FAILED")

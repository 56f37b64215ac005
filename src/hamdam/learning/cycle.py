"""One learning cycle: export a round, retrain incrementally, gate, promote.

- Incremental: training continues from the served (champion) model with ``init_from`` on the
  round's records plus a replay sample of earlier data, not from scratch on everything.
- Gate: the candidate is promoted only if held-out perplexity rises by at most
  ``learning.tolerance`` (relative). Promotion moves the ``champion`` pointer that ``hamdam chat``
  serves and the MLflow registered-model alias ``champion``.
- A failed retrain leaves its round ``failed``; its records are trained on in the next cycle.
- One cycle at a time per workspace (a file lock): a round left running by a chat that was killed
  and the round a restarted chat asks for never train side by side. A cycle killed mid-training
  leaves its round ``versioned``; the next cycle marks the dead MLflow run KILLED and trains it.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from hamdam.data.quality import QualityFilter
from hamdam.data.records import load_dialogues
from hamdam.data.sources import iter_sources
from hamdam.evaluation.evaluate import perplexity
from hamdam.io import write_atomic_text
from hamdam.learning.rounds import RoundExporter
from hamdam.learning.store import ChatStore
from hamdam.models.export import load_exported, read_latest, write_pointer

log = logging.getLogger(__name__)

CHAMPION_FILE = "champion.json"


@dataclass(frozen=True)
class CycleResult:
    round: int
    records: int
    ppl_before: float
    ppl_after: float
    promoted: bool
    model_dir: Path
    mlflow_run_id: str | None


def champion_dir(runs_dir: Path) -> Path:
    """The model being served: the last promoted one, else the last trained one."""
    pointer = Path(runs_dir) / CHAMPION_FILE
    if pointer.is_file():
        return Path(json.loads(pointer.read_text(encoding="utf-8"))["model_dir"])
    return read_latest(Path(runs_dir))


def replay_sample(data_dir: Path, exclude: set[str], size: int, seed: int) -> list[dict[str, Any]]:
    """``size`` earlier records (seed corpus, imports, older rounds), drawn reproducibly."""
    pool = [r for r in iter_sources(data_dir) if r.source not in exclude]
    chosen = random.Random(seed).sample(pool, min(size, len(pool)))
    return [c.dialogue.to_record() for c in chosen]


def heldout_perplexity(model_dir: Path, heldout: list, batch_size: int = 16) -> float:
    exported = load_exported(model_dir)
    return perplexity(exported.model, exported.chat_format, heldout, batch_size)["perplexity"]


def run_cycle(cfg: DictConfig, parent_run_id: str | None = None) -> CycleResult | None:
    """Export the pending turns as a round and train on it; None when there is nothing to learn."""
    runs_dir = Path(cfg.paths.runs_dir)
    (runs_dir / "rounds").mkdir(parents=True, exist_ok=True)
    with FileLock(runs_dir / "rounds" / "learn.lock"):
        return _cycle(cfg, parent_run_id)


def _cycle(cfg: DictConfig, parent_run_id: str | None) -> CycleResult | None:
    learning = cfg.learning
    root, runs_dir = Path(cfg.paths.root_dir), Path(cfg.paths.runs_dir)
    store = ChatStore(learning.store)
    try:
        safety = instantiate(cfg.safety.detector) if cfg.get("safety") and cfg.safety.enabled else None
        exporter = RoundExporter(store, root, QualityFilter(**learning.quality), learning.include_unrated, safety)
        exporter.resume()
        info = exporter.export(cfg.get("up_to_turn"))
        pending = store.db.execute("SELECT id, source FROM rounds WHERE status IN ('versioned', 'failed') ORDER BY id")
        pending = pending.fetchall()
        if info is None and not pending:
            return None
        number = pending[-1][0]
        sources = {source for _, source in pending}
        records = [r for s in sorted(sources) for r in map(json.loads, (root / "data" / s).read_text().splitlines())]
        replay = replay_sample(root / "data", sources, int(len(records) * learning.replay_ratio), seed=number)
        work = runs_dir / "rounds" / f"{number:04d}"
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records + replay)
        write_atomic_text(work / "train.jsonl", text)

        base = champion_dir(runs_dir)
        heldout = load_dialogues(learning.heldout)
        before = heldout_perplexity(base, heldout)
        train_cfg = compose(
            config_name="train",
            overrides=[
                f"paths.root_dir={root}",
                f"paths.output_dir={work}",
                f"init_from={base}",
                f"data.path={work / 'train.jsonl'}",
                f"data.val_path={learning.heldout}",
                f"trainer.max_epochs={learning.epochs}",
                f"export_dir={work / 'model'}",
                f"run_name=round-{number:04d}",
                "callbacks.model_checkpoint=null",
                "callbacks.rich_progress_bar=null",
                *learning.train_overrides,
            ],
        )
        with open_dict(train_cfg):
            train_cfg.logger.tags = {
                "hamdam.round": str(number),
                **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {}),
            }
        from hamdam.training.run import train

        _close_dead_runs(train_cfg.logger.get("tracking_uri"), number)
        try:
            train(train_cfg)
        except Exception:
            store.db.execute("UPDATE rounds SET status = 'failed' WHERE id = ?", (number,))
            raise
        after = heldout_perplexity(work / "model", heldout)
        promoted = after <= before * (1 + learning.tolerance)
        run_id = _record(train_cfg, work / "model", number, len(records), len(replay), before, after, promoted, info)
        store.db.execute(
            "UPDATE rounds SET status = ? WHERE status IN ('versioned', 'failed')",
            ("promoted" if promoted else "rejected",),
        )
        if promoted:
            write_pointer(runs_dir / CHAMPION_FILE, work / "model", {"round": number})
        log.info(
            "round %d: held-out perplexity %.2f -> %.2f, %s",
            number,
            before,
            after,
            "promoted" if promoted else "rejected",
        )
        return CycleResult(number, len(records), before, after, promoted, work / "model", run_id)
    finally:
        store.close()


def _close_dead_runs(tracking_uri: str | None, number: int) -> None:
    """Runs of this round still RUNNING belong to a cycle that was killed (we hold the lock): KILLED."""
    if not tracking_uri:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return
    query = f"tags.`hamdam.round` = '{number}' and attributes.status = 'RUNNING'"
    for run in client.search_runs(experiments, query):
        client.set_tag(run.info.run_id, "hamdam.error", "the learning cycle was killed; the round was trained again")
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning(
            "round %d: MLflow run %s was left running by a killed cycle; marked KILLED", number, run.info.run_id
        )


def _record(cfg, model_dir, number, records, replay, before, after, promoted, info) -> str | None:
    """Round params and gate metrics on the training run; the registry alias on promotion."""
    from mlflow.tracking import MlflowClient

    from hamdam.evaluation.evaluate import training_run_id

    run_id = training_run_id(cfg.logger.tracking_uri, model_dir)
    if run_id is None:
        return None
    client = MlflowClient(tracking_uri=cfg.logger.tracking_uri)
    for key, value in {"round": number, "round_records": records, "replay_records": replay}.items():
        client.log_param(run_id, f"learning.{key}", value)
    if info is not None:
        client.set_tag(run_id, "hamdam.round_data_md5", str(info.data_md5))
    client.log_metric(run_id, "heldout/ppl_before", before)
    client.log_metric(run_id, "heldout/ppl_after", after)
    client.set_tag(run_id, "hamdam.promoted", str(promoted).lower())
    if promoted:
        name = "hamdam-companion"
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name)
        version = client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id)
        client.set_registered_model_alias(name, "champion", version.version)
    return run_id


def learn(cfg: DictConfig) -> None:
    """``hamdam learn``: run one cycle and print its result as JSON."""
    import sys

    result = run_cycle(cfg, parent_run_id=cfg.get("parent_run"))
    payload = {"round": None} if result is None else {
        "round": result.round, "records": result.records, "ppl_before": result.ppl_before,
        "ppl_after": result.ppl_after, "promoted": result.promoted, "model_dir": str(result.model_dir),
        "mlflow_run_id": result.mlflow_run_id,
    }  # fmt: skip
    sys.stdout.write(json.dumps(payload) + "\n")

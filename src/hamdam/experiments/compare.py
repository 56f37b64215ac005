"""``hamdam compare``: runs side by side, from MLflow, on the metric names every kind of run shares.

Training runs (``hamdam train``, sweep trials, the pipeline, learning rounds) all log
``heldout/ppl`` (with its 95% interval) on one held-out set, and ``hamdam evaluate`` adds
``heldout/distinct_2`` and the persona figures to the run of the model it measured. So a table of
those, beside the parameters in which the runs differ, compares any runs. The figure (held-out
perplexity with its interval, one bar per run) is written as a PNG and logged, with the table, to a
run of its own in the "comparisons" experiment, so the comparison itself is kept.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hamdam.errors import HamdamError
from hamdam.io import write_atomic_text

log = logging.getLogger(__name__)

COMPARISONS_EXPERIMENT = "comparisons"
# Parameters that differ between any two runs and say nothing about the model.
NOISE = ("paths.", "run_name", "run_prefix", "export_dir", "logger.", "hydra", "init_from", "ckpt_path", "data.path",
         "data.val_path", "heldout.path", "callbacks.", "record_latest", "trainer.default_root_dir")  # fmt: skip


@dataclass(frozen=True)
class Row:
    run_id: str
    name: str
    experiment: str
    params: dict[str, str]
    metrics: dict[str, float]


def find_runs(client: Any, cfg: DictConfig) -> list[Row]:
    """The runs asked for: by id or name, an experiment's, or the best ``top`` on ``rank_by``."""
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        raise HamdamError(f"No MLflow runs in {cfg.tracking_uri} yet. Train a model first (`hamdam train`).")
    ids = [e for e, name in experiments.items() if name != COMPARISONS_EXPERIMENT]
    if cfg.get("experiment"):
        ids = [e for e, name in experiments.items() if name == cfg.experiment]
        if not ids:
            raise HamdamError(f"No MLflow experiment '{cfg.experiment}'. The experiments here: "
                              f"{', '.join(sorted(experiments.values()))}.")  # fmt: skip
    if cfg.get("runs"):
        found = []
        for wanted in cfg.runs:
            wanted = str(wanted)
            hits = client.search_runs(ids, f"attributes.run_id = '{wanted}'") if len(wanted) == 32 else []
            hits = hits or client.search_runs(ids, f"attributes.run_name = '{wanted}'", order_by=["start_time DESC"])
            if not hits:
                raise HamdamError(f"No MLflow run '{wanted}' (by id or name) in {cfg.tracking_uri}. "
                                  "`hamdam compare --top 10` lists the best runs with their names.")  # fmt: skip
            found.append(hits[0])
        runs = found
    else:
        order = "ASC" if cfg.lower_is_better else "DESC"
        metric = f"metrics.`{cfg.rank_by}`"
        runs = client.search_runs(ids, f"{metric} > -1e300", order_by=[f"{metric} {order}"], max_results=int(cfg.top))
        if not runs:
            raise HamdamError(f"No run here has the metric {cfg.rank_by} yet; every training run that finishes logs "
                              "heldout/ppl.")  # fmt: skip
    return [Row(r.info.run_id, r.info.run_name or r.info.run_id[:8], experiments.get(r.info.experiment_id, "?"),
                dict(r.data.params), dict(r.data.metrics)) for r in runs]  # fmt: skip


def differing(rows: list[Row]) -> list[str]:
    """The parameters whose values are not the same in every run (missing counts as a value)."""
    keys = sorted({k for r in rows for k in r.params if not k.startswith(NOISE)})
    return [k for k in keys if len({r.params.get(k) for r in rows}) > 1]


def table(rows: list[Row], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    shown = [m for m in metrics if any(m in r.metrics for r in rows)]
    shown += sorted({k for r in rows for k in r.metrics if k.startswith("safety/")} - set(shown))
    params = differing(rows)
    header = ["run", "experiment", *params, *shown]
    body = []
    for r in rows:
        values = [f"{r.metrics[m]:.4g}" if m in r.metrics else "-" for m in shown]
        body.append([r.name, r.experiment, *[r.params.get(p, "-") for p in params], *values])
    return header, body


def render(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], metric: str, path: Path) -> Path | None:
    """One bar per run with the metric's 95% interval where logged (``<metric>_low``/``_high``)."""
    from matplotlib.figure import Figure

    shown = [r for r in rows if metric in r.metrics]
    if not shown:
        return None
    values = [r.metrics[metric] for r in shown]
    low = [v - r.metrics.get(f"{metric}_low", v) for r, v in zip(shown, values, strict=True)]
    high = [r.metrics.get(f"{metric}_high", v) - v for r, v in zip(shown, values, strict=True)]
    figure = Figure(figsize=(max(4.0, 1.1 * len(shown) + 2), 3.8), dpi=100)
    axes = figure.add_subplot()
    axes.bar(range(len(shown)), values, yerr=[low, high], capsize=4, color="#6b8fb3")
    axes.set_xticks(range(len(shown)), [r.name[:28] for r in shown], rotation=30, ha="right", fontsize=8)
    axes.set(ylabel=metric, title=f"{metric} (95% interval where logged)")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", metadata={"Software": None})
    return path


def compare(cfg: DictConfig) -> list[Row]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    rows = find_runs(client, cfg)
    header, body = table(rows, list(cfg.metrics))
    if cfg.json:
        sys.stdout.write(json.dumps([dict(zip(header, line, strict=True)) for line in body], ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render(header, body))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.out_dir) / f"compare-{stamp}"
    png = plot(rows, cfg.rank_by, out / "compare.png")
    text = io.StringIO()
    csv.writer(text).writerows([header, *body])
    write_atomic_text(out / "compare.csv", text.getvalue())
    if cfg.log_to_mlflow:
        from hamdam.training.tracking import experiment_id

        experiment = experiment_id(client, COMPARISONS_EXPERIMENT, cfg.get("artifact_location"))
        run = client.create_run(experiment, run_name=f"compare-{stamp}", tags={"hamdam.kind": "comparison",
                                "hamdam.compared": ",".join(r.run_id for r in rows)})  # fmt: skip
        client.log_artifact(run.info.run_id, str(out / "compare.csv"))
        if png is not None:
            client.log_artifact(run.info.run_id, str(png))
        client.set_terminated(run.info.run_id, "FINISHED")
        log.info("comparison logged to MLflow run %s (experiment %s)", run.info.run_id, COMPARISONS_EXPERIMENT)
    sys.stderr.write(f"table and plot: {out}\n")
    return rows

"""The DVC pipeline on a fresh clone: rebuild data/ to data.dvc's version, repro, metrics, params diff."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

BIN = Path(sys.executable).parent
TINY = {
    "model": {
        "backbone": {"n_layer": 1, "n_head": 2, "n_embd": 32},
        "tokenizer": {"vocab_size": 600},
    },
    "trainer": {"limit_train_batches": 4, "limit_val_batches": 2},
    "callbacks": {"rich_progress_bar": None},
}


def sh(args, cwd, env, check=True):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A fresh clone of the committed tree plus the working changes, without any DVC cache."""
    root = tmp_path_factory.mktemp("clone")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    for name in files.stdout.splitlines():
        src = REPO / name
        if src.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / name)
    # hamdam reads the clone's conf/ (a workspace's conf/ comes before the package's).
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env["HF_HUB_OFFLINE"] = "1"
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    sh([*git, "init", "-q"], root, env)
    # The pipeline test trains a tiny model: same stages, smaller shapes.
    experiment = root / "conf" / "experiment" / "pipeline.yaml"
    cfg = yaml.safe_load(experiment.read_text(encoding="utf-8"))
    cfg.update(TINY)
    experiment.write_text("# @package _global_\n" + yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    evaluate = root / "conf" / "evaluate.yaml"
    evaluate.write_text(
        evaluate.read_text(encoding="utf-8")
        .replace("num_generate: 100", "num_generate: 6")
        .replace("max_new_tokens: 64", "max_new_tokens: 12"),
        encoding="utf-8",
    )
    sh([*git, "add", "-A"], root, env)
    sh([*git, "commit", "-qm", "clone"], root, env)
    return root, env, git


@pytest.mark.slow
def test_fresh_clone_rebuilds_data_to_the_version_data_dvc_names(clone):
    root, env, _ = clone
    assert not (root / "data").exists()
    sh(["hamdam", "data", "build"], root, env)
    status = sh(["dvc", "status", "data.dvc", "--json"], root, env)
    assert json.loads(status.stdout) == {}


@pytest.mark.slow
def test_repro_runs_end_to_end_then_does_nothing(clone):
    root, env, git = clone
    if not (root / "data").exists():
        sh(["hamdam", "data", "build"], root, env)
    sh(["dvc", "repro"], root, env)
    metrics = json.loads((root / "pipeline" / "metrics.json").read_text())
    assert metrics["eval_pairs"] >= 300 and metrics["generated"] == 6
    assert metrics["eval_perplexity"] > 1
    assert 0 <= metrics["distinct_1"] <= 1 and 0 <= metrics["clean_end_share"] <= 1
    # Persona consistency of the 6 replies whose listener the labels know.
    assert 0 <= metrics["persona_consistency"] <= 1 and 0 < metrics["persona_scored"] <= 6
    assert (root / "pipeline" / "plots" / "train_loss.csv").read_text().startswith("step,loss\n")
    report = json.loads((root / "pipeline" / "prepared" / "report.json").read_text())
    assert report["kept"] >= 3000

    assert json.loads(sh(["dvc", "status", "--json"], root, env).stdout) == {}
    again = sh(["dvc", "repro"], root, env)
    assert "Running stage" not in again.stdout
    shown = sh(["dvc", "metrics", "show"], root, env).stdout
    assert "eval_perplexity" in shown

    # Evaluating another model writes beside that model, never over the pipeline's tracked results.
    tracked = (root / "pipeline" / "metrics.json").read_bytes()
    shutil.copytree(root / "pipeline" / "model", root / "runs" / "other" / "model")
    sh(["hamdam", "evaluate", "model_dir=runs/other/model"], root, env)
    assert json.loads((root / "runs" / "other" / "eval" / "metrics.json").read_text())["generated"] == 6
    assert (root / "pipeline" / "metrics.json").read_bytes() == tracked
    assert json.loads(sh(["dvc", "status", "--json"], root, env).stdout) == {}

    # The training stage's run, in the "pipeline" experiment, carries the evaluation's numbers under
    # the names training gave the same set: the two measurements of heldout/ppl agree.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
    assert run.info.run_name.startswith("pipeline-")
    history = client.get_metric_history(run.info.run_id, "heldout/ppl")
    assert len(history) == 2 and history[0].value == pytest.approx(history[1].value, rel=1e-5)
    assert run.data.metrics["heldout/ppl"] == pytest.approx(metrics["eval_perplexity"])
    assert {"heldout/loss", "heldout/distinct_2", "val/loss"} <= set(run.data.metrics)

    # A changed parameter in the Hydra config shows in `dvc params diff`.
    sh([*git, "add", "-A"], root, env)
    sh([*git, "commit", "-qm", "lock"], root, env)
    prepare_cfg = root / "conf" / "prepare.yaml"
    prepare_cfg.write_text(prepare_cfg.read_text().replace("val_fraction: 0.05", "val_fraction: 0.1"))
    diff = sh(["dvc", "params", "diff"], root, env).stdout
    assert "val_fraction" in diff and "0.05" in diff and "0.1" in diff


@pytest.mark.slow
def test_local_remote_push_and_pull_restore_data_byte_identical(clone):
    root, env, _ = clone
    if not (root / "data").exists():
        sh(["hamdam", "data", "build"], root, env)
    before = {p.relative_to(root): p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}
    sh(["dvc", "push", "data.dvc"], root, env)
    shutil.rmtree(root / "data")
    shutil.rmtree(root / ".dvc" / "cache")
    sh(["dvc", "pull", "data.dvc"], root, env)
    after = {p.relative_to(root): p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}
    assert after == before
    assert json.loads(sh(["dvc", "status", "data.dvc", "--json"], root, env).stdout) == {}


def _experiments(shown: list) -> dict[str, dict]:
    """name -> its run's state, params and metrics, from `dvc exp show --json`."""
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev.get("data") or {}
                found[rev["name"]] = {"state": (experiment.get("executor") or {}).get("state"),
                                      "params": data.get("params", {}), "metrics": data.get("metrics", {})}  # fmt: skip
    return found


@pytest.mark.slow
def test_dvc_experiments_queue_run_show_and_apply(clone):
    """`dvc exp run --queue -S ...` twice and `dvc queue start`: both run the pipeline on the changed
    Hydra config, `dvc exp show` gives each one's parameter and metrics, and `dvc exp apply` puts one's
    config and results back in the workspace."""
    import time

    root, env, git = clone
    if not (root / "pipeline" / "model").exists():  # run alone, not after the repro test
        if not (root / "data").exists():
            sh(["hamdam", "data", "build"], root, env)
        sh(["dvc", "repro"], root, env)
    sh(["git", "checkout", "-q", "--", "conf"], root, env)
    sh([*git, "add", "-A"], root, env)
    sh([*git, "commit", "-qm", "before experiments", "--allow-empty"], root, env)
    key = "conf/experiment/pipeline.yaml:trainer.limit_train_batches"
    for batches in (2, 3):
        sh(["dvc", "exp", "run", "--queue", "-S", f"{key}={batches}", "-n", f"batches-{batches}"], root, env)
    sh(["dvc", "queue", "start", "-j", "1"], root, env)
    deadline, status = time.monotonic() + 900, ""
    while time.monotonic() < deadline:
        status = sh(["dvc", "queue", "status"], root, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    found = _experiments(json.loads(sh(["dvc", "exp", "show", "--json"], root, env).stdout))
    assert {"batches-2", "batches-3"} <= set(found), status
    for name, batches in (("batches-2", 2), ("batches-3", 3)):
        assert found[name]["state"] == "success", sh(["dvc", "queue", "logs", name], root, env, check=False).stdout
        params = found[name]["params"]["conf/experiment/pipeline.yaml"]["data"]
        assert params["trainer"]["limit_train_batches"] == batches
        metrics = found[name]["metrics"]["pipeline/metrics.json"]["data"]
        assert metrics["eval_perplexity"] > 1 and metrics["generated"] == 6
    two = found["batches-2"]["metrics"]["pipeline/metrics.json"]["data"]["eval_perplexity"]
    assert two != found["batches-3"]["metrics"]["pipeline/metrics.json"]["data"]["eval_perplexity"]

    sh(["dvc", "exp", "apply", "batches-2"], root, env)
    applied = (root / "conf" / "experiment" / "pipeline.yaml").read_text(encoding="utf-8")
    assert applied.startswith("# @package _global_") and "limit_train_batches: 2" in applied
    assert json.loads((root / "pipeline" / "metrics.json").read_text())["eval_perplexity"] == pytest.approx(two)
    assert json.loads(sh(["dvc", "status", "--json"], root, env).stdout) == {}

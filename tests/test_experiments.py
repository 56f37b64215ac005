"""Searched sweeps (Optuna) and `hamdam compare`, as a user runs them."""

import json
import sqlite3

import pytest

from conftest import REPO, SAMPLE, run_hamdam

HELDOUT = REPO / "corpus" / "eval_fa.jsonl"
SEARCH = ["train", "-m", "hparams_search=smoke_optuna", "experiment=smoke", "trainer.max_epochs=1",
          "trainer.limit_train_batches=2", "callbacks.rich_progress_bar=null", f"data.path={SAMPLE}",
          f"heldout.path={HELDOUT}"]  # fmt: skip


def runs(root):
    """(run id, name, status, parent run, heldout/ppl) of every MLflow run, with its experiment."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return db.execute(
            """
            SELECT r.run_uuid, r.name, r.status, e.name,
                   (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'mlflow.parentRunId'),
                   (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'hamdam.kind'),
                   (SELECT value FROM latest_metrics m WHERE m.run_uuid = r.run_uuid AND m.key = 'heldout/ppl'),
                   (SELECT value FROM latest_metrics m WHERE m.run_uuid = r.run_uuid AND m.key = 'best/heldout/ppl')
            FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id ORDER BY r.start_time
            """
        ).fetchall()


@pytest.mark.slow
def test_an_optuna_search_nests_its_trials_under_the_study_resumes_and_compare_ranks_them(tmp_path):
    import optuna

    searched = run_hamdam([*SEARCH, "hydra.sweeper.n_trials=6"], tmp_path)
    assert searched.returncode == 0, searched.stderr[-3000:]
    study = optuna.load_study(study_name="smoke_optuna", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and {t.params["model.lora.r"] for t in complete} <= {4, 8, 16}
    assert all(1e-4 <= t.params["model.optimizer.lr"] <= 1e-2 for t in complete)

    rows = runs(tmp_path)
    (parent,) = [r for r in rows if r[5] == "optuna-study"]
    trials = [r for r in rows if r[4] == parent[0]]
    assert parent[2] == "FINISHED" and parent[3] == "sweeps" and len(trials) == 6
    assert all(r[2] == "FINISHED" and r[3] == "sweeps" and r[6] > 0 for r in trials)
    assert parent[7] == pytest.approx(min(r[6] for r in trials)) == pytest.approx(study.best_value)
    assert "parent_run" not in " ".join(r[1] for r in trials)  # names say the trial and its parameters
    (results,) = tmp_path.glob("runs/multirun-*/optimization_results.yaml")
    assert "best_params" in results.read_text()

    # The same command with one more trial wanted resumes the study: one new run, the same parent.
    resumed = run_hamdam([*SEARCH, "hydra.sweeper.n_trials=7"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len([r for r in runs(tmp_path) if r[4] == parent[0]]) == 7
    assert [r[0] for r in runs(tmp_path) if r[5] == "optuna-study"] == [parent[0]]

    compared = run_hamdam(["compare", "--top", "3"], tmp_path)
    assert compared.returncode == 0, compared.stderr[-3000:]
    lines = compared.stdout.splitlines()
    header = lines[0].split()
    assert header[:2] == ["run", "experiment"] and "heldout/ppl" in header and "model.optimizer.lr" in header
    ppl = [float(line.split()[header.index("heldout/ppl")]) for line in lines[2:]]
    assert len(ppl) == 3 and ppl == sorted(ppl) and ppl[0] == pytest.approx(study.best_value, rel=1e-3)
    (png,) = tmp_path.glob("runs/compare/compare-*/compare.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    comparisons = [r for r in runs(tmp_path) if r[3] == "comparisons"]
    assert len(comparisons) == 1 and comparisons[0][5] == "comparison"

    names = [r[1] for r in trials[:2]]
    by_name = run_hamdam(["compare", *names, "--json"], tmp_path)
    assert by_name.returncode == 0 and [row["run"] for row in json.loads(by_name.stdout)] == names
    missing = run_hamdam(["compare", "no-such-run"], tmp_path)
    assert missing.returncode == 2 and "No MLflow run 'no-such-run'" in missing.stderr


@pytest.mark.slow
def test_a_sweep_through_submitit_runs_its_jobs_as_parallel_processes(tmp_path):
    """hydra-submitit-launcher's local mode (its SLURM mode submits the same jobs to a cluster): two
    jobs at once build the shared stand-in model and open the MLflow store without colliding."""
    swept = run_hamdam(["train", "-m", "hydra/launcher=submitit_local", *SEARCH[3:], "model.lora.r=2,4"], tmp_path)
    assert swept.returncode == 0, swept.stderr[-3000:]
    finished = sorted(r[1].split("model.lora.r=")[1][0] for r in runs(tmp_path) if r[2] == "FINISHED")
    assert finished == ["2", "4"] and all(r[3] == "sweeps" for r in runs(tmp_path))
    assert len(list(tmp_path.glob("runs/multirun-*/.submitit/*/*_result.pkl"))) == 2  # two submitit jobs


def test_the_cluster_launcher_composes_as_submitit_slurm(tmp_path):
    shown = run_hamdam(["train", "hydra/launcher=cluster", "--cfg", "hydra"], tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in shown.stdout
    assert "gpus_per_node: 1" in shown.stdout and "timeout_min: 240" in shown.stdout

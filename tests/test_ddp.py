"""Plain DDP as torchrun starts it: every rank runs the whole `hamdam train`, and the run still leaves
one MLflow run, one run folder and one exported model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from hamdam.errors import HamdamError
from hamdam.training.run import drop_stray_run_dir, train

from conftest import REPO, SAMPLE, TINY_SCRATCH, hamdam_command

HELDOUT = REPO / "corpus" / "eval_fa.jsonl"
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
FAST = [
    f"data.path={SAMPLE}",
    f"heldout.path={HELDOUT}",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "callbacks.rich_progress_bar=null",
]


@pytest.mark.slow
def test_torchrun_ddp_on_two_cpu_processes_makes_one_run_one_folder_one_model(tmp_path):
    # Each rank names its run folder as it starts (run_name's ${now:...}); two that started in
    # different seconds are made certain here by naming them after the rank.
    args = ["train", "experiment=smoke", *FAST, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.precision=32-true", "run_name=smoke-rank${oc.env:RANK}"]  # fmt: skip
    _, env = hamdam_command(args)
    command = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "hamdam", *args]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr + result.stdout
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # both ranks trained

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments)  # one run, not one per rank
    assert client.get_experiment(run.info.experiment_id).name == "train" and run.info.status == "FINISHED"
    assert run.data.tags["hamdam.world_size"] == "2" and run.data.params["trainer.devices"] == "2"
    assert {"heldout/ppl", "val/loss", "train/loss_step", "train/tokens_per_sec", "train/step_seconds"} <= set(
        run.data.metrics
    )
    assert {"resolved_config.yaml", "model"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(list((tmp_path / "mlartifacts").rglob("adapter_model.safetensors"))) == 1  # logged once

    # One run folder, rank 0's (rank 1 removed its own, which held only its Hydra log), holding the
    # checkpoints and the one exported model that runs/latest.json and the MLflow run point at.
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()] == ["smoke-rank0"]
    run_dir = tmp_path / "runs" / "smoke-rank0"
    assert run.info.run_name == "smoke-rank0"
    assert [p.parent for p in (tmp_path / "runs").rglob("adapter_model.safetensors")] == [run_dir / "model"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "heldout.json").is_file()
    assert json.loads((tmp_path / "runs" / "latest.json").read_text())["model_dir"] == str(run_dir / "model")
    assert run.data.tags["hamdam.model_dir"] == str((run_dir / "model").resolve())


def test_plain_ddp_from_one_command_says_to_use_torchrun_or_ddp_spawn(compose_cfg):
    """Lightning would re-run `hamdam`'s command line per device, which cannot be re-run."""
    cfg = compose_cfg(*FAST, *TINY_SCRATCH, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "~logger")
    with pytest.raises(HamdamError, match=r"`torchrun --nproc_per_node 2 -m hamdam train \.\.\.`.*trainer=ddp_spawn"):
        train(cfg)


def test_another_ranks_run_folder_is_removed_only_when_it_holds_nothing_but_its_hydra_files(tmp_path):
    run = tmp_path / "runs" / "smoke-20260101-120000"
    (run / "checkpoints").mkdir(parents=True)
    stray = tmp_path / "runs" / "smoke-20260101-120001"  # rank 1 started a second later
    (stray / ".hydra").mkdir(parents=True)
    (stray / ".hydra" / "config.yaml").write_text("a: 1\n")
    (stray / "train.log").write_text("rank 1\n")
    drop_stray_run_dir(run, run)  # rank 0's own: kept
    drop_stray_run_dir(stray, run)
    assert run.is_dir() and not stray.exists()

    (stray / "checkpoints").mkdir(parents=True)  # something else: not this code's to delete
    drop_stray_run_dir(stray, run)
    assert (stray / "checkpoints").is_dir()

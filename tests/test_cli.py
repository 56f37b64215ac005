"""The `hamdam` command as a user runs it: errors without tracebacks, chat over a pipe, sweeps, DDP."""

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from hamdam.chat import session

from conftest import REPO, SAMPLE, run_hamdam

FAST = ["trainer.max_epochs=1", "callbacks.rich_progress_bar=null", f"data.path={SAMPLE}"]


def finished_runs(workspace: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(workspace / "mlflow.db") as db:
        return db.execute("select run_uuid, status from runs").fetchall()


def test_usage_and_unknown_command(tmp_path):
    assert run_hamdam([], tmp_path).returncode == 2
    result = run_hamdam(["trian"], tmp_path)
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr and "train" in result.stderr


def test_each_command_has_its_own_help_with_its_options_and_answers_it_without_torch(tmp_path):
    import subprocess
    import sys

    probe = (
        "import sys\nfrom hamdam.cli import main\nsys.argv = ['hamdam', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', code)"
    )

    def help_of(*words):
        out = subprocess.run([sys.executable, "-c", probe, *words], capture_output=True, text=True, cwd=tmp_path)
        return out.stdout

    text = help_of("data", "import", "--help")
    assert "usage: hamdam data import" in text and "--format" in text and "--speaker" in text and "path" in text
    assert "example:" in text and text.rstrip().endswith("no torch 0")
    assert "--learn" in help_of("chat", "--help") and "--json" in help_of("rounds", "--help")
    assert "round" in help_of("rollback", "--help") and "--forever" in help_of("selfgen", "--help")
    listing = help_of("data")  # a group lists its commands
    assert all(f"data {c}" in listing for c in ("build", "prepare", "stats", "import"))
    assert listing.rstrip().endswith("no torch 2")


def test_broken_json_fails_before_training_with_one_paragraph(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('[{"instruction": "سلام", "response": "سلام پسرم"},\n{"instruction": "x", ', encoding="utf-8")
    result = run_hamdam(["train", f"data.path={bad}"], tmp_path)
    assert result.returncode == 2
    assert f"Data file '{bad}' is not valid JSON" in result.stderr
    assert "line 2" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "latest.json").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_wrong_override_is_rejected(tmp_path):
    result = run_hamdam(["train", "trainer.max_epoch=1"], tmp_path)
    assert result.returncode != 0
    assert "Could not override 'trainer.max_epoch'" in result.stderr


def test_missing_model_is_one_paragraph_without_traceback(tmp_path):
    result = run_hamdam(["train", "model=gpt2_fa_qlora", f"data.path={SAMPLE}"], tmp_path)
    assert result.returncode == 2
    assert "Could not load the tokenizer of 'HooshvareLab/gpt2-fa'" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_without_a_trained_model_says_what_to_do(tmp_path):
    result = run_hamdam(["chat"], tmp_path, stdin="سلام\n")
    assert result.returncode == 2
    assert "No model is served yet" in result.stderr and "hamdam train" in result.stderr
    assert "hamdam use NAME" in result.stderr


@pytest.mark.slow
def test_smoke_then_chat_over_a_pipe(tmp_path):
    # A workspace whose pipeline has trained its model (here: a smoke model standing in for it) ...
    pipeline = run_hamdam(["train", "experiment=smoke", *FAST, "run_name=pipeline-stand-in", "record_latest=false",
                           f"export_dir={tmp_path / 'pipeline' / 'model'}"], tmp_path)  # fmt: skip
    assert pipeline.returncode == 0, pipeline.stderr[-3000:]
    # ... then a quick smoke run: it is listed, but the pipeline's model stays the served one.
    trained = run_hamdam(["train", "experiment=smoke", *FAST, f"heldout.path={REPO / 'corpus' / 'eval_fa.jsonl'}"],
                         tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert [status for _, status in finished_runs(tmp_path)] == ["FINISHED", "FINISHED"]
    listed = json.loads(run_hamdam(["models", "--json"], tmp_path).stdout)
    assert [(m["name"], m["served"]) for m in listed][0] == ("pipeline", True)
    assert [m["served"] for m in listed[1:]] == [False] and listed[-1]["model_name"] == "smoke_lora"
    # The smoke run was measured on the held-out set (the stand-in, in a folder without one, was not).
    assert listed[0]["heldout_ppl"] is None and listed[-1]["heldout_ppl"] > 1
    assert run_hamdam(["use", "latest"], tmp_path).returncode == 0
    listed = json.loads(run_hamdam(["models", "--json"], tmp_path).stdout)
    assert [m["served"] for m in listed] == [False, True]
    chat = run_hamdam(["chat", "seed=1"], tmp_path, stdin="سلام\n\nدلم برات تنگ شده <|assistant|>\n")
    assert chat.returncode == 0, chat.stderr[-3000:]
    lines = chat.stdout.splitlines()
    assert len(lines) == 3  # one output line per input line
    assert lines[0].strip() and lines[2].strip() and lines[1] == ""
    assert "stdin line 2 is empty" in chat.stderr
    assert not any(marker in chat.stdout for marker in ("<sep>", "<|startoftext|>", "<|endoftext|>"))
    assert "هوش مصنوعی" in chat.stderr  # the session's opening disclosure (stderr keeps stdout one-to-one)

    crisis = run_hamdam(["chat", "seed=1"], tmp_path, stdin="سلام بابا\nبابا می‌خوام بیام پیشت\n")
    assert crisis.returncode == 0, crisis.stderr[-3000:]
    first, second = crisis.stdout.splitlines()
    assert "۱۲۳" not in first
    assert "هوش مصنوعی" in second and "۱۲۳" in second and "۱۴۸۰" in second

    # --learn: each completed turn is in the chat store; feedback lines are acknowledged in place.
    learn = run_hamdam(
        ["chat", "--learn", "seed=1"], tmp_path, stdin="سلام بابا\n/good\nخوبی؟\n/fix خوبم پسرم، تو خوبی؟\n"
    )
    assert learn.returncode == 0, learn.stderr[-3000:]
    assert len(learn.stdout.splitlines()) == 4
    with sqlite3.connect(tmp_path / "chats.db") as db:
        rows = db.execute("select message, rating, fixed_reply from turns order by id").fetchall()
    assert rows == [("سلام بابا", "good", None), ("خوبی؟", "good", "خوبم پسرم، تو خوبی؟")]


@pytest.mark.slow
def test_sweep_runs_one_mlflow_run_per_job(tmp_path):
    result = run_hamdam(
        ["train", "-m", "experiment=smoke", *FAST, "trainer.limit_train_batches=2", "model.lora.r=2,4"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        rows = db.execute(
            "select r.status, p.value from runs r join params p on p.run_uuid = r.run_uuid where p.key = 'model.lora.r'"
        ).fetchall()
    assert sorted(rows) == [("FINISHED", "2"), ("FINISHED", "4")]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        names = sorted(name for (name,) in db.execute("select name from runs"))
        experiments = {name for (name,) in db.execute(
            "select e.name from runs r join experiments e on e.experiment_id = r.experiment_id")}  # fmt: skip
    assert experiments == {"sweeps"}
    # Distinct, and each says which job it was: its number and the swept setting.
    assert len(set(names)) == 2 and "-0-" in names[0] and "model.lora.r=2" in names[0] and "model.lora.r=4" in names[1]


@pytest.mark.slow
def test_ddp_trains_with_two_spawned_cpu_processes(tmp_path):
    result = run_hamdam(
        [
            "train",
            "experiment=smoke",
            *FAST,
            "trainer=ddp_spawn",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world_size: 2" in result.stderr or "Initializing distributed: GLOBAL_RANK: 1" in result.stderr
    assert [status for _, status in finished_runs(tmp_path)] == ["FINISHED"]
    latest = json.loads((tmp_path / "runs" / "latest.json").read_text())
    assert (Path(latest["model_dir"]) / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_a_killed_training_is_marked_killed_and_resumes_from_its_last_epoch(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from conftest import hamdam_command

    tiny = ["model.backbone.n_layer=1", "model.backbone.n_head=2", "model.backbone.n_embd=32",
            "model.max_length=96", "model.tokenizer.vocab_size=600", f"data.path={SAMPLE}",
            "callbacks.rich_progress_bar=null", "run_name=first"]  # fmt: skip
    command, env = hamdam_command(["train", *tiny, "trainer.max_epochs=500"])
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "runs" / "first" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if last.exists() and torch.load(last, weights_only=False)["epoch"] >= 2:
            break
        time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    epochs_done = torch.load(last, weights_only=False)["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]
    assert epochs_done >= 3
    assert [status for _, status in finished_runs(tmp_path)] == ["RUNNING"]

    resumed = run_hamdam(["train", *tiny[:-1], "run_name=second", "ckpt_path=last",
                          f"trainer.max_epochs={epochs_done + 1}"], tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        runs = dict(db.execute("select name, status from runs").fetchall())
        error = db.execute("select t.value from tags t join runs r on r.run_uuid = t.run_uuid "
                           "where r.name = 'first' and t.key = 'hamdam.error'").fetchone()  # fmt: skip
    assert runs == {"first": "KILLED", "second": "FINISHED"}
    assert error and f"process {process.pid}" in error[0] and "killed" in error[0]
    # It went on from the last epoch the killed run finished: one more epoch, not a restart.
    second = torch.load(tmp_path / "runs" / "second" / "checkpoints" / "last.ckpt", weights_only=False)
    assert second["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == epochs_done + 1


def test_terminal_chat_leaves_cleanly_on_eof_and_ctrl_c(monkeypatch):
    from rich.console import Console

    class Engine:
        def respond(self, conversation, message):  # never reached
            raise AssertionError

    for exc in (EOFError, KeyboardInterrupt):

        def raise_exc(self, prompt="", exc=exc):
            raise exc

        monkeypatch.setattr(Console, "input", raise_exc)
        session.run_terminal(Engine(), "> ", "< ")  # returns, does not raise


def test_pipeline_entry_point_composes_the_same_config(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "train.py"), "--cfg", "job", "model=gpt2_fa_qlora", "model.lora.r=4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "name_or_path: HooshvareLab/gpt2-fa" in result.stdout
    assert "r: 4" in result.stdout


def test_data_build_then_stats_json(tmp_path):

    corpus = f"corpus.corpus_dir={REPO}/corpus"
    built = run_hamdam(["data", "build", corpus], tmp_path)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "data" / "seed" / "grief_fa.jsonl").is_file()
    result = run_hamdam(["data", "stats", "--json", corpus], tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["unique_pairs"] >= 3000 and stats["unique_instructions"] >= 1000
    assert stats["eval_pairs"] >= 300 and stats["eval_overlap"] == 0
    assert stats["per_source"]["seed/grief_fa.jsonl"] > 3000 and stats["per_source"]["seed/sample_fa.jsonl"] == 112


def test_a_group_set_to_null_is_dropped(tmp_path):
    shown = run_hamdam(["train", "logger=null", "--cfg", "job"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "mlflow_logger" not in shown.stdout and "model:" in shown.stdout

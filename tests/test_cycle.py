"""A learning cycle end to end on a tiny model: round -> incremental retrain -> gate -> champion."""

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from hamdam.data.records import load_dialogues
from hamdam.errors import HamdamError
from hamdam.learning.champion import champion_dir, serve
from hamdam.learning.engine import RoundEngine
from hamdam.learning.gate import Gate, Scores
from hamdam.learning.retrain import template
from hamdam.learning.store import ChatStore, RoundStatus, Score
from hamdam.models.export import read_latest
from hamdam.models.tiny import ensure_tiny_gpt2
from hamdam.training.run import train

from conftest import CONF, DVC, SAMPLE, sh


def seed_workspace(root: Path, persona: dict[str, str] | None = None) -> list[dict]:
    """A git + DVC workspace whose data/ holds the sample corpus (each record said by ``persona``,
    if given), and a small held-out file."""
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    sh([*git, "init", "-q"], root)
    sh([DVC, "init", "-q"], root)
    (root / "data" / "seed").mkdir(parents=True)
    pairs = [{**d.to_record(), **(persona or {})} for d in load_dialogues(SAMPLE)]
    (root / "data" / "seed" / "a.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    (root / "heldout.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs[:8]))
    sh([DVC, "add", "-q", "data"], root)
    sh([*git, "add", "-A"], root)
    sh([*git, "commit", "-qm", "seed"], root)
    return pairs


def run_cycle(cfg):
    """One round as `hamdam learn` runs it."""
    return RoundEngine(cfg, template(cfg)).run()


def smoke_workspace(root: Path) -> None:
    """The seed workspace with a smoke model trained by `hamdam train`, as a user would."""
    from conftest import run_hamdam

    seed_workspace(root)
    trained = run_hamdam(
        [
            "train",
            "experiment=smoke",
            f"data.path={SAMPLE}",
            "trainer.max_epochs=1",
            "callbacks.rich_progress_bar=null",
        ],
        root,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    chosen = run_hamdam(["use", "latest"], root)  # training never changes the served model by itself
    assert chosen.returncode == 0 and "serving" in chosen.stdout, chosen.stderr[-2000:]


def test_cycle_trains_from_the_champion_and_gates(tmp_path):
    pairs = seed_workspace(tmp_path)
    heldout = tmp_path / "heldout.jsonl"
    tiny = ensure_tiny_gpt2([t for p in pairs for t in p.values()], str(tmp_path / "tiny"))

    common = [f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = compose(
            "train",
            [*common, "experiment=smoke", f"model.name_or_path={tiny}", f"data.path={SAMPLE}",
             f"paths.output_dir={tmp_path / 'runs' / 'base'}", "trainer.max_epochs=1",
             "callbacks.rich_progress_bar=null"],
        )  # fmt: skip
        train(base)
        serve(tmp_path / "runs", tmp_path / "runs" / "base" / "model", {"chosen": "test"})
        store = ChatStore(tmp_path / "chats.db")
        session = store.start_session("base")
        for message, reply in [("سلام بابا", "سلام پسرم، خوبی؟"), ("دلم برات تنگه", "منم دلم برات تنگه.")]:
            store.add_turn(session, message, reply, "model", "fa")
        store.close()

        learn = [
            *common, f"learning.store={tmp_path / 'chats.db'}", f"learning.heldout={heldout}", "learning.epochs=1",
        ]  # fmt: skip
        promote = ["learning.tolerance=100", "learning.max_drift=100"]
        result = run_cycle(compose("learn", [*learn, *promote]))
        assert result.round == 1 and result.kind == "chat" and result.records == 2 and result.promoted
        assert champion_dir(tmp_path / "runs") == (tmp_path / "runs" / "rounds" / "0001" / "model").resolve()
        client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        run = client.get_run(result.mlflow_run_id)
        assert run.data.params["learning.round"] == "1" and run.data.params["init_from"].endswith("base/model")
        assert run.data.metrics["gate/ppl_after"] == result.ppl_after
        # The run is grouped with learning, records the model it fine-tuned (not the config's model
        # group), and is measured on the whole held-out set like every other run.
        assert client.get_experiment(run.info.experiment_id).name == "rounds"
        assert run.data.params["model.name"] == "smoke_lora" and run.data.params["model.lora.r"] == "8"
        assert run.data.tags["hamdam.model"] == "smoke_lora"
        assert run.data.metrics["heldout/ppl"] > 0
        assert client.get_model_version_by_alias("hamdam-companion", "champion").run_id == result.mlflow_run_id
        assert (
            sh(["git", "log", "-1", "--format=%s"], tmp_path)
            == "data: chat round 1 (2 records, data/rounds/0001.jsonl)"
        )

        assert run_cycle(compose("learn", learn)) is None  # nothing new

        store = ChatStore(tmp_path / "chats.db")
        store.add_turn(store.start_session("r1"), "خداحافظ بابا", "خداحافظ پسرم، مواظب خودت باش.", "model", "fa")
        store.close()
        rejected = run_cycle(compose("learn", [*learn, "learning.tolerance=-1"]))  # no candidate can pass
        assert rejected.round == 2 and not rejected.promoted and "tolerance" in rejected.reason
        # The champion was measured when it was gated (round 1), not again: the same stored figure.
        assert rejected.ppl_before == result.ppl_after
        # A round's candidate never becomes "latest" (what `hamdam chat` serves): only the gate decides.
        assert read_latest(tmp_path / "runs") == (tmp_path / "runs" / "base" / "model").resolve()
        assert champion_dir(tmp_path / "runs") == (tmp_path / "runs" / "rounds" / "0001" / "model").resolve()

        # A retrain that fails: its MLflow run is FAILED, and its round is trained in the next cycle.
        store = ChatStore(tmp_path / "chats.db")
        store.add_turn(store.start_session("r2"), "شب بخیر بابا", "شب بخیر پسرم، خوب بخوابی.", "model", "fa")
        store.close()
        with pytest.raises(ValueError, match="learning rate"):
            run_cycle(compose("learn", [*learn, "learning.train_overrides=['model.optimizer.lr=-1']"]))
        failed = [r for r in client.search_runs([run.info.experiment_id]) if r.data.tags.get("hamdam.round") == "3"]
        assert [r.info.status for r in failed] == ["FAILED"] and "learning rate" in failed[0].data.tags["hamdam.error"]
        retried = run_cycle(compose("learn", [*learn, *promote]))
        assert retried.round == 3 and retried.records == 1 and retried.promoted

        # Drift is bounded against the first served model (base), not only the champion.
        store = ChatStore(tmp_path / "chats.db")
        store.add_turn(store.start_session("r3"), "صبح بخیر بابا", "صبح بخیر پسرم.", "model", "fa")
        assert store.reference_model() == str((tmp_path / "runs" / "base" / "model").resolve())
        store.close()
        drifted = run_cycle(compose("learn", [*learn, "learning.tolerance=100", "learning.max_drift=-1"]))
        assert not drifted.promoted and "first served model" in drifted.reason
        store = ChatStore(tmp_path / "chats.db")
        assert [(r.number, r.status) for r in store.rounds()] == [
            (1, RoundStatus.PROMOTED), (2, RoundStatus.REJECTED), (3, RoundStatus.PROMOTED), (4, RoundStatus.REJECTED)
        ]  # fmt: skip
        # One held-out measurement per model: base and the four candidates.
        assert store.db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 5
        store.close()


def test_gate_bounds_the_step_and_the_drift_from_the_first_model():
    gate = Gate(tolerance=0.02, max_drift=0.05)
    score = lambda ppl: Score(ppl, ppl * 0.9, ppl * 1.1, 1000)  # noqa: E731
    assert gate.decide(Scores(score(101.5), champion=score(100.0), reference=score(100.0))).promoted
    assert not gate.decide(Scores(score(103.0), champion=score(100.0), reference=score(100.0))).promoted
    # Three rounds of +1.9% each pass the per-round tolerance but not the bound on drift: 100 -> 105.8.
    decision = gate.decide(Scores(score(105.8), champion=score(103.8), reference=score(100.0)))
    assert not decision.promoted and "max_drift" in decision.reason


def test_a_setting_in_learning_train_overrides_reaches_the_rounds_training(tmp_path):
    """Any `hamdam train` setting reaches a round through the config; one it cannot honour is an error."""
    pairs = seed_workspace(tmp_path)
    tiny = ensure_tiny_gpt2([t for p in pairs for t in p.values()], str(tmp_path / "tiny"))
    common = [f"paths.root_dir={tmp_path}", f"paths.runs_dir={tmp_path / 'runs'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        train(compose("train", [*common, "experiment=smoke", f"model.name_or_path={tiny}", f"data.path={SAMPLE}",
                                f"paths.output_dir={tmp_path / 'runs' / 'base'}", "trainer.max_epochs=1",
                                "callbacks.rich_progress_bar=null"]))  # fmt: skip
        serve(tmp_path / "runs", tmp_path / "runs" / "base" / "model", {"chosen": "test"})
        store = ChatStore(tmp_path / "chats.db")
        store.add_turn(store.start_session("base"), "سلام بابا", "سلام پسرم، خوبی؟", "model", "fa")
        store.close()
        learn = [*common, f"learning.store={tmp_path / 'chats.db'}", f"learning.heldout={tmp_path / 'heldout.jsonl'}",
                 "learning.epochs=1"]  # fmt: skip

        # The base is a LoRA adapter of rank 8: a round cannot continue it at rank 4, and says so.
        with pytest.raises(HamdamError, match="model.lora.r=4"):
            run_cycle(compose("learn", [*learn, "learning.train_overrides=['model=gpt2_fa_qlora','model.lora.r=4']"]))

        cfg = compose("learn", [*learn, "learning.train_overrides=['trainer.accumulate_grad_batches=3']"])
        result = run_cycle(cfg)
        params = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.mlflow_run_id).data.params
        assert params["trainer.accumulate_grad_batches"] == "3"
        assert params["data.val_path"] == "None" and params["callbacks.model_checkpoint"] == "None"
        assert params["trainer.max_epochs"] == "1" and params["init_from"].endswith("base/model")


@pytest.mark.slow
def test_piped_learning_session_of_25_turns_makes_two_rounds(tmp_path):
    from conftest import run_hamdam

    smoke_workspace(tmp_path)

    lines = "".join(f"پیام شماره‌ی {i} برای بابا\n" for i in range(25))
    chat = run_hamdam(
        [
            "chat", "--learn", "learning.every=10", f"learning.heldout={tmp_path / 'heldout.jsonl'}",
            "learning.epochs=1", "learning.tolerance=100", "learning.max_drift=100", "learning.include_unrated=true",
            "safety.enabled=true", *LEARN_GIBBERISH, *RULES_ONLY,
        ],
        tmp_path,
        stdin=lines,
    )  # fmt: skip
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert len(chat.stdout.splitlines()) == 25
    store = ChatStore(tmp_path / "chats.db")
    rounds = store.db.execute("SELECT id, status FROM rounds ORDER BY id").fetchall()
    assert [r[0] for r in rounds] == [1, 2] and all(status in ("promoted", "rejected") for _, status in rounds)
    assert store.db.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 25
    subjects = sh(["git", "log", "--format=%s"], tmp_path).splitlines()
    assert sum(s.startswith("data: chat round") for s in subjects) == 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`hamdam.round` != ''")
    assert sorted(r.data.tags["hamdam.round"] for r in runs) == ["1", "2"]
    (parent,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`hamdam.kind` = 'chat-session'"
    )
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)

    # `hamdam rounds` lists both; `hamdam rollback 1` restores round 1's data/ and model.
    listed = run_hamdam(["rounds", "--json"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    table = json.loads(listed.stdout)
    assert [r["round"] for r in table] == [1, 2] and all(r["mlflow_run"] for r in table)
    back = run_hamdam(["rollback", "1"], tmp_path)
    assert back.returncode == 0, back.stderr[-2000:]
    assert table[0]["data_md5"] in (tmp_path / "data.dvc").read_text()
    assert (tmp_path / "data" / "rounds" / "0001.jsonl").is_file()
    assert not (tmp_path / "data" / "rounds" / "0002.jsonl").exists()
    assert json.loads(sh([DVC, "status", "data.dvc", "--json"], tmp_path)) == {}
    served_then = (
        (tmp_path / "runs" / "rounds" / "0001" / "model").resolve()
        if table[0]["status"] == "promoted"
        else (Path(json.loads((tmp_path / "runs" / "latest.json").read_text())["model_dir"]))
    )
    assert champion_dir(tmp_path / "runs") == served_then

    # `hamdam rollback 0`: the data and the model from before the first round.
    before = run_hamdam(["rollback", "0"], tmp_path)
    assert before.returncode == 0 and "from before round 1" in before.stdout, before.stderr[-2000:]
    assert (tmp_path / "data.dvc").read_text() == sh(["git", "show", "HEAD~2:data.dvc"], tmp_path) + "\n"
    assert not (tmp_path / "data" / "rounds").exists() or not any((tmp_path / "data" / "rounds").iterdir())
    smoke = Path(json.loads((tmp_path / "runs" / "latest.json").read_text())["model_dir"])
    assert champion_dir(tmp_path / "runs") == smoke


# The smoke model has random weights: what the learned output guard makes of its gibberish is
# arbitrary, and these tests count the turns a round takes. The rules still guard the chat and the
# round (the learned layer has tests and a benchmark of its own).
RULES_ONLY = ["safety.detector.reply_model=null"]
# These tests count the turns a round takes from the smoke model's gibberish: the quality filters
# that would drop it (script share, printable text) are off.
LEARN_GIBBERISH = ["learning.quality.min_script_ratio=0", "learning.quality.printable=false"]


def _round_runs(db: Path) -> list[str]:
    """Statuses of the MLflow runs of learning rounds, read straight from the tracking database."""
    with sqlite3.connect(db) as con:
        return [
            status
            for (status,) in con.execute(
                "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE t.key = 'hamdam.round'"
            )
        ]


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_round_loses_no_turn_and_the_restart_redoes_it(tmp_path):
    from conftest import hamdam_command, run_hamdam

    smoke_workspace(tmp_path)
    learning = [
        "learning.every=3", f"learning.heldout={tmp_path / 'heldout.jsonl'}", "learning.tolerance=100",
        "learning.max_drift=100", *LEARN_GIBBERISH, *RULES_ONLY,
    ]  # fmt: skip

    # A chat whose third turn starts a round that trains for a long time (200 epochs) ...
    chat, env = hamdam_command(["chat", "--learn", *learning, "learning.epochs=200"])
    process = subprocess.Popen(
        chat, cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, start_new_session=True,
    )  # fmt: skip
    for i in range(3):
        process.stdin.write(f"پیام {i} برای مامان\n")
        process.stdin.flush()
        assert process.stdout.readline()
    deadline = time.monotonic() + 300
    while "RUNNING" not in (_round_runs(tmp_path / "mlflow.db") if (tmp_path / "mlflow.db").exists() else []):
        assert time.monotonic() < deadline and process.poll() is None, "the round never started training"
        time.sleep(0.5)
    # ... is killed mid-training together with its round process, as a power cut would.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    store = ChatStore(tmp_path / "chats.db")
    assert store.db.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 3
    assert store.db.execute("SELECT status FROM rounds").fetchall() == [("versioned",)]
    store.close()

    # Starting the chat again finishes round 1 first; the new session's turn is kept for later rounds.
    again = run_hamdam(["chat", "--learn", *learning, "learning.epochs=1"], tmp_path, stdin="پیام ۴\n")
    assert again.returncode == 0, again.stderr[-3000:]
    store = ChatStore(tmp_path / "chats.db")
    assert store.db.execute("SELECT COUNT(*) FROM turns").fetchone()[0] == 4
    assert store.db.execute("SELECT id, status, records FROM rounds").fetchall() == [(1, "promoted", 3)]
    assert store.db.execute("SELECT COUNT(*) FROM turns WHERE round_id IS NULL").fetchone()[0] == 1
    store.close()
    assert sorted(_round_runs(tmp_path / "mlflow.db")) == ["FINISHED", "KILLED"]
    table = json.loads(run_hamdam(["rounds", "--json"], tmp_path).stdout)
    assert table[0]["status"] == "promoted" and table[0]["ppl_after"] > 0 and table[0]["mlflow_run"]
    assert champion_dir(tmp_path / "runs") == (tmp_path / "runs" / "rounds" / "0001" / "model").resolve()


@pytest.mark.slow
def test_hamdam_learn_runs_one_round_and_prints_it_as_json(tmp_path):
    from conftest import run_hamdam

    smoke_workspace(tmp_path)
    store = ChatStore(tmp_path / "chats.db")
    store.add_turn(store.start_session("base"), "سلام بابا", "سلام پسرم، خوبی؟", "model", "fa")
    store.close()
    learned = run_hamdam(
        ["learn", f"learning.heldout={tmp_path / 'heldout.jsonl'}", "learning.epochs=1", "learning.tolerance=100",
         "learning.max_drift=100", *RULES_ONLY],
        tmp_path,
    )  # fmt: skip
    assert learned.returncode == 0, learned.stderr[-3000:]
    result = json.loads(learned.stdout.splitlines()[-1])
    assert result["round"] == 1 and result["kind"] == "chat" and result["records"] == 1 and result["promoted"]
    assert {"collect_filter_version", "retrain", "gate", "record", "promote"} <= set(result["seconds"])
    assert champion_dir(tmp_path / "runs") == Path(result["model_dir"])

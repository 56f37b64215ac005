"""Self-generated rounds: accumulate with human replay, the collapse gate, and `hamdam selfgen` end to end."""

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from test_cycle import DVC, RULES_ONLY, seed_workspace, sh

from hamdam.data.quality import QualityFilter, unprintable
from hamdam.data.records import Dialogue, Turn
from hamdam.learning.champion import champion_dir, serve
from hamdam.learning.gate import DiversityCheck, Gate, Scores
from hamdam.learning.retrain import Retrainer
from hamdam.learning.store import ChatStore, Diversity, Score
from hamdam.models.export import read_latest
from hamdam.selfgen.diversity import diversity_of
from hamdam.selfgen.loop import generated_records, progress

from conftest import hamdam_command, run_hamdam


def _write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _pairs(prefix: str, n: int, origin: str | None = None) -> list[dict]:
    extra = {"origin": origin} if origin else {}
    return [{"instruction": f"{prefix} سوال {i}", "response": f"{prefix} جواب {i}", **extra} for i in range(n)]


def test_a_generated_round_trains_on_at_most_half_generated_data_and_always_replays_human_data(tmp_path):
    _write(tmp_path / "data" / "seed" / "a.jsonl", _pairs("انسان", 200))
    _write(tmp_path / "data" / "generated" / "0001.jsonl", _pairs("قدیمی", 150, "generated"))
    _write(tmp_path / "data" / "generated" / "0002.jsonl", _pairs("تازه", 60, "generated"))
    template = OmegaConf.create({"paths": {"root_dir": str(tmp_path), "runs_dir": str(tmp_path / "runs")}})
    # replay_ratio 0.5 alone would give 30 replayed records and a 2/3+ generated share.
    data = Retrainer(template, epochs=1, replay_ratio=0.5, max_generated_share=0.5).data(2, ["generated/0002.jsonl"])
    rows = [json.loads(line) for line in data.path.read_text(encoding="utf-8").splitlines()]
    generated = [r for r in rows if r.get("origin") == "generated"]
    assert data.records == 60 and len(rows) == data.records + data.replay
    assert len(generated) / len(rows) <= 0.5 and data.generated_share == len(generated) / len(rows)
    assert sum(r["instruction"].startswith("انسان") for r in rows) >= 60  # human replay at least matches the new
    # The same round again draws the same file (seeded by the round number).
    again = Retrainer(template, epochs=1, replay_ratio=0.5, max_generated_share=0.5).data(2, ["generated/0002.jsonl"])
    assert again.path.read_text(encoding="utf-8") == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def test_a_chat_round_replays_in_the_proportions_of_data_but_never_more_generated_than_allowed(tmp_path):
    _write(tmp_path / "data" / "seed" / "a.jsonl", _pairs("انسان", 20))
    _write(tmp_path / "data" / "generated" / "0001.jsonl", _pairs("قدیمی", 300, "generated"))
    _write(tmp_path / "data" / "rounds" / "0002.jsonl", _pairs("چت", 10, "chat"))
    template = OmegaConf.create({"paths": {"root_dir": str(tmp_path), "runs_dir": str(tmp_path / "runs")}})
    data = Retrainer(template, epochs=1, replay_ratio=4.0, max_generated_share=0.5).data(2, ["rounds/0002.jsonl"])
    rows = [json.loads(line) for line in data.path.read_text(encoding="utf-8").splitlines()]
    assert data.replay == 40 and sum(r.get("origin") == "generated" for r in rows) == 25  # floor(0.5 * 50)
    assert sum(r["instruction"].startswith("انسان") for r in rows) == 15
    # A generated round the gate rejected is never replayed.
    data = Retrainer(template, epochs=1, replay_ratio=4.0).data(2, ["rounds/0002.jsonl"], {"generated/0001.jsonl"})
    rows = [json.loads(line) for line in data.path.read_text(encoding="utf-8").splitlines()]
    assert data.replay == 20 and not [r for r in rows if r.get("origin") == "generated"]


def _score(ppl: float) -> Score:
    return Score(ppl, ppl * 0.9, ppl * 1.1, 1000)


def test_the_gate_rejects_a_round_whose_replies_grow_alike_even_when_perplexity_holds():
    scores = Scores(candidate=_score(10.0), champion=_score(10.0), reference=_score(10.0))
    human, start = Diversity(0.6, 0.90, 12.0), Diversity(0.7, 0.95, 14.0)
    gate = Gate(tolerance=0.02, max_drift=0.05, min_distinct2=0.95)
    alike = gate.decide(scores, DiversityCheck(Diversity(0.3, 0.80, 9.0), human, start))
    assert not alike.promoted and "distinct-2 0.800 below 95% of the human replies' 0.900" in alike.reason
    assert gate.decide(scores, DiversityCheck(Diversity(0.5, 0.86, 11.0), human, start)).promoted
    # Learning cannot be asked for more variety than it started with: the floor follows a lower start.
    low_start = Diversity(0.5, 0.70, 10.0)
    assert gate.decide(scores, DiversityCheck(Diversity(0.5, 0.67, 10.0), human, low_start)).promoted
    assert not gate.decide(scores, DiversityCheck(Diversity(0.5, 0.66, 10.0), human, low_start)).promoted
    # Perplexity still decides first.
    worse = Scores(candidate=_score(10.5), champion=_score(10.0), reference=_score(10.0))
    assert "tolerance" in gate.decide(worse, DiversityCheck(human, human, start)).reason


def test_diversity_is_distinct_n_over_all_replies_and_their_mean_length():
    result = diversity_of(["a b c", "a b d e"])
    assert result.distinct_1 == 5 / 7 and result.distinct_2 == 4 / 5 and result.mean_words == 3.5


def test_the_quality_filter_drops_unprintable_text_that_a_gibberish_model_writes():
    assert unprintable("سلام\u0006 بابا") and unprintable("خوبی\ufffd") and unprintable("abc\u202edef")
    assert not unprintable("می\u200cخواهم\nبگویم\tکه دلم تنگ است")  # ZWNJ, newline and tab are text
    quality = QualityFilter()
    bad = Dialogue((Turn("user", "سلام"), Turn("assistant", "سلام\u001b[31m پسرم")))
    assert quality.reject(bad) == "unprintable"


def test_progress_line_says_what_was_kept_dropped_and_decided():
    from hamdam.learning.engine import RoundResult

    result = RoundResult(3, "generated", 84, 168, 41.2, 40.9, True, "held-out perplexity -0.7%", Path("m"), None, {},
                         0.33, Diversity(0.5, 0.81, 12.0), {"candidates": 100, "kept": 84, "duplicate": 10,
                                                            "no_clean_end": 6})  # fmt: skip
    line = progress(2, result, 840, 10000, 41.6)
    assert line == (
        "cycle 2: round 3 (generated) kept 84 of 100 candidates (dropped: duplicate 10, no_clean_end 6); "
        "held-out perplexity 41.20 -> 40.90, distinct-2 0.810; promoted: held-out perplexity -0.7%; "
        "generated data 840/10000; 42 s"
    )


# --- `hamdam selfgen` end to end on a tiny model ----------------------------------------------------

# A from-scratch model trained until it writes whole words and ends its replies: a random-weight
# model's replies would almost all be dropped by the filters, and a round needs some to keep.
SCRATCH = ["model.backbone.n_layer=2", "model.backbone.n_head=2", "model.backbone.n_embd=64", "model.max_length=96",
           "model.tokenizer.vocab_size=800", "trainer.max_epochs=40", "model.optimizer.lr=3e-3",
           "callbacks.rich_progress_bar=null", "callbacks.model_checkpoint=null"]  # fmt: skip


FATHER = {"persona": "father", "listener": "son"}


@pytest.fixture(scope="module")
def scratch_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scratch")
    seed_workspace(root, FATHER)  # trained with the persona header its rounds will generate under
    trained = run_hamdam(["train", f"data.path={root / 'data' / 'seed' / 'a.jsonl'}", *SCRATCH], root)
    assert trained.returncode == 0, trained.stderr[-2000:]
    return read_latest(root / "runs")


def selfgen_workspace(root: Path, model: Path) -> None:
    """The seed workspace (a father speaking to his son), serving the trained tiny model (read
    only: rounds write their own)."""
    seed_workspace(root, FATHER)
    serve(root / "runs", model, {"chosen": "test"})


def _selfgen_args(root: Path, *extra: str) -> list[str]:
    return ["selfgen", f"learning.heldout={root / 'heldout.jsonl'}", "learning.epochs=1", "selfgen.samples=40",
            "selfgen.diversity.size=8", *RULES_ONLY, *extra]  # fmt: skip


def _runs(root: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


@pytest.mark.slow
def test_two_selfgen_runs_make_two_generated_rounds_versioned_tracked_and_restorable(tmp_path, scratch_model):
    selfgen_workspace(tmp_path, scratch_model)
    for _ in range(2):
        made = run_hamdam(_selfgen_args(tmp_path), tmp_path)
        assert made.returncode == 0, made.stderr[-3000:]
        assert made.stdout.strip().splitlines()[-1].startswith("cycle 1: round ")
    table = json.loads(run_hamdam(["rounds", "--json"], tmp_path).stdout)
    assert [(r["round"], r["kind"], r["source"]) for r in table] == [
        (1, "generated", "generated/0001.jsonl"),
        (2, "generated", "generated/0002.jsonl"),
    ]
    subjects = sh(["git", "log", "--format=%s"], tmp_path).splitlines()
    assert subjects[:2] == [
        f"data: generated round {n} ({table[n - 1]['records']} records, data/generated/{n:04d}.jsonl)" for n in (2, 1)
    ]
    records = [json.loads(line) for line in (tmp_path / "data" / "generated" / "0001.jsonl").read_text().splitlines()]
    assert len(records) == table[0]["records"] > 0 and {r["origin"] for r in records} == {"generated"}
    # Each reply was generated under the persona header of its prompt's exchange, and is learned with it.
    assert {(r["persona"], r["listener"]) for r in records} == {("father", "son")}
    assert generated_records(tmp_path / "data") == table[0]["records"] + table[1]["records"]

    runs = _runs(tmp_path)
    loops = [r for r in runs if r.data.tags.get("hamdam.kind") == "selfgen-loop"]
    rounds = {r.data.tags["hamdam.round"]: r for r in runs if r.data.tags.get("hamdam.round_kind") == "generated"}
    assert len(loops) == 2 and all(r.info.status == "FINISHED" for r in loops)
    assert sorted(rounds) == ["1", "2"] and {r.info.run_id for r in rounds.values()} == {t["mlflow_run"] for t in table}
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for number, run in rounds.items():
        assert run.data.tags["mlflow.parentRunId"] in {r.info.run_id for r in loops}
        metrics = run.data.metrics
        assert metrics["filter/candidates"] == 40 and metrics["filter/kept"] == table[int(number) - 1]["records"]
        assert {"gate/ppl_before", "gate/ppl_after", "heldout/ppl", "diversity/candidate_distinct_2",
                "diversity/human_distinct_2", "round/generated_share"} <= set(metrics)  # fmt: skip
        assert metrics["round/generated_share"] <= 0.5
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert artifacts == [f"samples/{int(number):04d}.jsonl"]

    # At the cap the loop generates nothing more.
    capped = run_hamdam(_selfgen_args(tmp_path, "selfgen.cap=1"), tmp_path)
    assert capped.returncode == 0 and "the cap is reached" in capped.stdout
    assert len(json.loads(run_hamdam(["rounds", "--json"], tmp_path).stdout)) == 2

    back = run_hamdam(["rollback", "1"], tmp_path)
    assert back.returncode == 0, back.stderr[-2000:]
    assert table[0]["data_md5"] in (tmp_path / "data.dvc").read_text()
    assert (tmp_path / "data" / "generated" / "0001.jsonl").is_file()
    assert not (tmp_path / "data" / "generated" / "0002.jsonl").exists()
    assert json.loads(sh([DVC, "status", "data.dvc", "--json"], tmp_path)) == {}
    # The model served after round 1: its own if promoted, else the one it was trained from.
    after_one = tmp_path / "runs" / "rounds" / "0001" / "model" if table[0]["status"] == "promoted" else scratch_model
    assert champion_dir(tmp_path / "runs") == after_one.resolve()


def _round_status(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("SELECT id, status FROM rounds ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
def test_selfgen_forever_killed_mid_round_loses_nothing_and_the_next_start_completes_the_round(tmp_path, scratch_model):
    selfgen_workspace(tmp_path, scratch_model)
    command, env = hamdam_command(_selfgen_args(tmp_path, "--forever", "selfgen.interval_s=0", "learning.epochs=40"))
    loop = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while _round_status(tmp_path / "chats.db") != [(1, "versioned")] and time.monotonic() < deadline:
        assert loop.poll() is None, "the loop ended before its first round was versioned"
        time.sleep(0.05)
    assert _round_status(tmp_path / "chats.db") == [(1, "versioned")]
    time.sleep(2)  # into the round's training (40 epochs)
    os.killpg(loop.pid, signal.SIGKILL)
    loop.wait()
    assert _round_status(tmp_path / "chats.db") == [(1, "versioned")]  # killed mid-round
    assert (tmp_path / "data" / "generated" / "0001.jsonl").is_file()
    assert json.loads(sh([DVC, "status", "data.dvc", "--json"], tmp_path)) == {}

    again = run_hamdam(_selfgen_args(tmp_path), tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    statuses = dict(_round_status(tmp_path / "chats.db"))
    assert statuses[1] in ("promoted", "rejected") and statuses[1] == statuses.get(2, statuses[1])
    store = ChatStore(tmp_path / "chats.db")
    assert store.round(1).model_dir and Path(store.round(1).model_dir).is_dir()
    store.close()
    runs = _runs(tmp_path)
    loops = sorted(r.info.status for r in runs if r.data.tags.get("hamdam.kind") == "selfgen-loop")
    assert loops == ["FINISHED", "KILLED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_the_loop_backs_off_after_rejections_and_sigterm_between_cycles_stops_it_at_once(tmp_path, scratch_model):
    selfgen_workspace(tmp_path, scratch_model)
    reject_all = ["learning.tolerance=-1", "selfgen.max_rejections=1", "selfgen.interval_s=600"]
    command, env = hamdam_command(_selfgen_args(tmp_path, "--forever", *reject_all))
    loop = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    first = loop.stdout.readline()
    assert first.startswith("cycle 1: round 1 (generated)") and "; rejected: held-out perplexity" in first, first
    backoff = loop.stdout.readline()
    assert backoff.startswith("1 round in a row not promoted (last: held-out perplexity") and backoff.endswith(
        "backing off: next cycle in 1200 s\n"
    ), backoff
    stopped_at = time.monotonic()
    loop.send_signal(signal.SIGTERM)
    rest = loop.stdout.read()
    assert loop.wait(timeout=60) == 0 and time.monotonic() - stopped_at < 10
    assert "stopped by SIGTERM" in rest
    assert [r.info.status for r in _runs(tmp_path) if r.data.tags.get("hamdam.kind") == "selfgen-loop"] == ["KILLED"]
    assert _round_status(tmp_path / "chats.db") == [(1, "rejected")]

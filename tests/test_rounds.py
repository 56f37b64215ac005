"""Learning rounds, data side: eligible turns become a DVC version and a git commit, crash-safely."""

import json

import pytest

from hamdam.data.quality import QualityFilter
from hamdam.data.records import Dialogue, Turn
from hamdam.errors import HamdamError
from hamdam.learning.rounds import ChatTurns, DataVersioner, GeneratedSamples, RoundExporter, RoundFilter
from hamdam.learning.store import ChatStore, GeneratedSample, RoundStatus
from hamdam.safety.detector import LayeredDetector
from hamdam.safety.rules import SafetyRules

from conftest import sh


def filled_store(path):
    store = ChatStore(path / "chats.db")
    session = store.start_session("m")
    store.add_turn(session, "سلام بابا، شماره‌ام ۰۹۱۲۳۴۵۶۷۸۹ هست", "سلام پسرم، خوبی؟", "model", "fa")
    fixed = store.add_turn(session, "دلم برات تنگه", "جواب ضعیف", "model", "fa")
    store.fix(fixed, "منم دلم برات تنگه عزیزم.")
    bad = store.add_turn(session, "خوبی؟", "جواب بد", "model", "fa")
    store.rate(bad, "bad")
    store.add_turn(session, "می‌خوام بیام پیشت", "[resources]", "crisis", "fa")
    store.add_turn(session, "امروز چی کار کنم؟", "this reply is not persian at all", "model", "fa")
    return store


def exporter_for(store: ChatStore, root, safety: LayeredDetector | None = None) -> RoundExporter:
    return RoundExporter(store, ChatTurns(), RoundFilter(QualityFilter(), safety), DataVersioner(root))


def test_a_round_becomes_a_dvc_version_and_a_git_commit(workspace):
    store = filled_store(workspace)
    exporter = exporter_for(store, workspace)
    before = (workspace / "data.dvc").read_text()
    info = exporter.export()
    assert info.number == 1 and info.kind == "chat" and info.source == "rounds/0001.jsonl"
    assert info.status == RoundStatus.VERSIONED == "versioned"
    rows = [json.loads(line) for line in (workspace / "data" / "rounds" / "0001.jsonl").read_text().splitlines()]
    assert [(r["instruction"], r["response"], r["origin"]) for r in rows] == [
        ("سلام بابا، شماره‌ام [PHONE] هست", "سلام پسرم، خوبی؟", "chat"),
        ("دلم برات تنگه", "منم دلم برات تنگه عزیزم.", "human"),
    ]  # /bad, crisis and the non-Persian model reply are not learned; PII is scrubbed
    assert (workspace / "data.dvc").read_text() != before and info.data_md5 in (workspace / "data.dvc").read_text()
    assert (
        sh(["git", "log", "-1", "--format=%H %s"], workspace)
        == f"{info.git_commit} data: chat round 1 (2 records, data/rounds/0001.jsonl)"
    )
    assert sh(["dvc", "status", "data.dvc"], workspace).endswith("up to date.")
    assert exporter.export() is None  # nothing new to learn
    assert [(r.number, r.kind, r.status) for r in store.rounds()] == [(1, "chat", RoundStatus.VERSIONED)]


def test_a_round_learns_nothing_the_output_guard_or_crisis_detector_rejects(workspace):
    """Turns stored while the chat's guard was off (or older than the current models) are screened again."""
    store = ChatStore(workspace / "chats.db")
    session = store.start_session("m")
    store.add_turn(session, "سلام بابا", "سلام پسرم، خوبی؟", "model", "fa")
    store.add_turn(session, "دلم برات تنگه", "بیا پیشم عزیزم، منتظرتم", "model", "fa")  # invitation
    fixed = store.add_turn(session, "کجایی؟", "جواب ضعیف", "model", "fa")
    store.fix(fixed, "من هنوز زنده‌ام پسرم")  # a /fix that claims to be alive
    store.add_turn(session, "می‌خوام خودمو بکشم", "سلام", "model", "fa")  # a crisis message
    exporter = exporter_for(store, workspace, safety=rules_only())
    info = exporter.export()
    rows = [json.loads(line) for line in (workspace / "data" / info.source).read_text().splitlines()]
    assert [(r["instruction"], r["response"]) for r in rows] == [("سلام بابا", "سلام پسرم، خوبی؟")]


def rules_only() -> LayeredDetector:
    return LayeredDetector(SafetyRules())


def test_a_round_interrupted_after_the_store_is_finished_on_restart(workspace):
    store = filled_store(workspace)
    exporter = exporter_for(store, workspace)
    exporter.version = lambda *args: (_ for _ in ()).throw(KeyboardInterrupt())  # "killed" here
    with pytest.raises(KeyboardInterrupt):
        exporter.export()
    assert not (workspace / "data" / "rounds").exists()
    store.close()

    restarted = exporter_for(ChatStore(workspace / "chats.db"), workspace)
    assert [r.status for r in restarted.store.rounds()] == [RoundStatus.EXPORTING]
    assert restarted.store.eligible() == []  # the turns belong to round 1 already: never taken twice
    (info,) = restarted.resume()
    assert info.number == 1 and info.records == 2 and info.status == "versioned"
    assert restarted.resume() == []


def test_a_generated_round_a_crash_left_half_exported_is_finished_by_the_next_chat_cycle(workspace):
    store = ChatStore(workspace / "chats.db")
    samples = [
        GeneratedSample("یادته با هم می‌رفتیم پارک؟", "آره عزیزم، یادمه.", "model"),
        GeneratedSample("سلام بابا", "this reply is not persian at all", "human"),
    ]
    number = store.open_round("generated", samples=samples, report='{"kept": 2}', folder="generated")
    # The process died here: the samples are in the store, nothing in data/ yet.
    exporter = RoundExporter(
        store, ChatTurns(), RoundFilter(QualityFilter()), DataVersioner(workspace), {"generated": GeneratedSamples()}
    )
    [row] = exporter.resume()
    assert (row.number, row.kind, row.source, row.records, row.status) == (
        number, "generated", "generated/0001.jsonl", 1, RoundStatus.VERSIONED
    )  # fmt: skip
    rows = [json.loads(line) for line in (workspace / "data" / "generated" / "0001.jsonl").read_text().splitlines()]
    assert rows == [{"instruction": "یادته با هم می‌رفتیم پارک؟", "origin": "generated", "prompt_origin": "model",
                     "response": "آره عزیزم، یادمه."}]  # fmt: skip
    assert sh(["git", "log", "-1", "--format=%s"], workspace) == (
        "data: generated round 1 (1 records, data/generated/0001.jsonl)"
    )
    # Without a reader for its kind, a cycle says which command finishes it.
    other = store.open_round("imported", folder="imports")
    with pytest.raises(HamdamError, match=rf"Round {other} \(kind 'imported'\) was left half-exported"):
        exporter.resume()


def test_replies_that_are_not_text_never_become_round_data(workspace):
    store = ChatStore(workspace / "chats.db")
    session = store.start_session("m")
    store.add_turn(session, "سلام بابا", "سلام\u0006 پسرم\u001b[31m خوبی\ufffd؟", "model", "fa")  # a gibberish model
    store.add_turn(session, "چی شده؟", "!!! ۱۲۳۴۵ ??? ...", "model", "fa")  # symbols and digits, few letters
    store.add_turn(session, "دلت تنگ شده؟", "آره  عزیزم،   خیلی", "model", "fa")  # text: kept, normalized
    info = exporter_for(store, workspace).export()
    rows = [json.loads(line) for line in (workspace / "data" / info.source).read_text().splitlines()]
    assert [(r["instruction"], r["response"]) for r in rows] == [("دلت تنگ شده؟", "آره عزیزم، خیلی")]
    quality = QualityFilter()
    reply = Dialogue((Turn("user", "سلام"), Turn("assistant", "!!! ۱۲۳۴۵ ??? ...")))
    assert quality.reject(reply) == "few_letters"

"""The chat store: committed turns survive kill -9; feedback decides what a round may learn."""

import os
import signal
import subprocess
import sys
import textwrap

from hamdam.chat.commands import FeedbackState, handle
from hamdam.learning.store import ChatStore


def test_feedback_decides_eligibility(tmp_path):
    store = ChatStore(tmp_path / "chats.db")
    session = store.start_session("m")
    ok = store.add_turn(session, "سلام بابا", "سلام پسرم", "model", "fa")
    bad = store.add_turn(session, "خوبی؟", "جواب بد", "model", "fa")
    fixed = store.add_turn(session, "دلم تنگه", "جواب معمولی", "model", "fa")
    store.add_turn(session, "می‌خوام بیام پیشت", "[resources]", "crisis", "fa")
    store.add_turn(session, "واقعاً خودتی؟", "[honest]", "identity", "fa")
    store.rate(bad, "bad")
    store.fix(fixed, "منم دلم برات تنگه، پسرم.")
    eligible = store.eligible()
    assert [t.id for t in eligible] == [ok, fixed]
    assert eligible[1].fixed_reply == "منم دلم برات تنگه، پسرم." and eligible[1].rating == "good"
    assert [t.id for t in store.eligible(include_unrated=False)] == [fixed]

    forgotten = store.start_session("m")
    store.add_turn(forgotten, "سلام", "سلام", "model", "fa")
    store.forget_session(forgotten)
    assert [t.id for t in store.eligible()] == [ok, fixed]
    assert store.completed_turns() == 6 and store.completed_turns(forgotten) == 1
    mode = store.db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_commands(tmp_path):
    store = ChatStore(tmp_path / "chats.db")
    state = FeedbackState(store, store.start_session(None))
    assert handle("سلام", state) is None
    assert "/fix" in handle("/help", state)
    assert "هنوز جوابی" in handle("/good", state)
    state.last_turn_id = store.add_turn(state.session_id, "سلام", "سلام پسرم", "model", "fa")
    assert "بعد از /fix" in handle("/fix", state)
    handle("/fix   سلام عزیزم، خوبی؟", state)
    assert store.eligible()[0].fixed_reply == "سلام عزیزم، خوبی؟"
    handle("/bad", state)
    assert store.eligible() == []
    assert "شناخته نشد" in handle("/gud", state)
    assert "--learn" in handle("/good", FeedbackState(None, None))


def test_kill_9_loses_no_completed_turn(tmp_path):
    """A writer is SIGKILLed mid-stream; every turn it reported as stored is still there."""
    db = tmp_path / "chats.db"
    writer = textwrap.dedent(
        f"""
        import sys
        from hamdam.learning.store import ChatStore
        store = ChatStore({str(db)!r})
        session = store.start_session(None)
        i = 0
        while True:
            turn = store.add_turn(session, "پیام " + str(i), "جواب " + str(i), "model", "fa")
            print(turn, flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    reported = [int(proc.stdout.readline()) for _ in range(200)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ChatStore(db)
    stored = {row[0] for row in store.db.execute("SELECT id FROM turns")}
    assert set(reported) <= stored
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

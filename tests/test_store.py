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


def test_the_chat_outlives_bad_bytes_control_characters_and_a_failing_message(tmp_path, word_tokenizer, caplog):
    import io

    from hamdam.chat.session import run_piped

    from conftest import engine_with

    engine, _ = engine_with(word_tokenizer, None, "سلام پسرم")
    respond = engine.respond

    def fragile(conversation, message):
        if "boom" in message:
            raise RuntimeError("the model failed")
        return respond(conversation, message)

    engine.respond = fragile
    store = ChatStore(tmp_path / "private" / "chats.db")
    state = FeedbackState(store, store.start_session(None))
    raw = "سلام\xff\xfe بابا\n\x1b[31mخوبی\x00؟\n boom \n\u202eدلم تنگ شده\u202c\n".encode("utf-8", "surrogateescape")
    raw = raw.replace("\xff\xfe".encode(), b"\xff\xfe")  # invalid UTF-8 on the wire
    source = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="replace")
    sink = io.StringIO()
    run_piped(engine, source, sink, state)
    assert sink.getvalue().splitlines() == ["سلام پسرم", "سلام پسرم", "", "سلام پسرم"]  # one line per line
    stored = [m for (m,) in store.db.execute("select message from turns order by id")]
    assert stored == ["سلام بابا", "[31mخوبی؟", "دلم تنگ شده"]  # no U+FFFD, ESC, NUL or bidi override
    assert "stdin line 1 holds bytes that are not UTF-8" in caplog.text
    assert "stdin line 3 could not be answered (RuntimeError: the model failed); the chat goes on" in caplog.text
    # What people tell the companion is private.
    assert (tmp_path / "private" / "chats.db").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "private").stat().st_mode & 0o777 == 0o700

"""Feedback commands typed in the chat: /good, /bad, /fix <better reply>, /forget, /help."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hamdam.data.normalize import normalize_text
from hamdam.learning.store import ChatStore
from hamdam.learning.worker import LearningWorker

HELP = (
    "/good: این جواب خوب بود  ·  /bad: این جواب بد بود (یاد گرفته نمی‌شه)  ·  "
    "/fix متن: جواب بهتر که باید یاد بگیره  ·  /forget: این گفت‌وگو هرگز یاد گرفته نشه  ·  /help"
)


@dataclass
class FeedbackState:
    """Where feedback applies (the session, its last stored turn) and, when learning, the rounds."""

    store: ChatStore | None
    session_id: int | None
    last_turn_id: int | None = None
    worker: LearningWorker | None = None
    serving: Path | None = None  # the model directory being served
    runs_dir: Path | None = None
    parent_run: str | None = None  # this session's MLflow run
    quantization: str | None = None  # how the served model's base is loaded (chat's setting)


def handle(line: str, state: FeedbackState) -> str | None:
    """The answer to a command line, or None when ``line`` is not a command."""
    if not line.startswith("/"):
        return None
    command, _, argument = line.partition(" ")
    command = command.lower()
    if command == "/help":
        return HELP
    if command not in ("/good", "/bad", "/fix", "/forget"):
        return f"دستور «{command}» شناخته نشد. {HELP}"
    if state.store is None or state.session_id is None:
        return "یادگیری خاموشه؛ برای ثبت بازخورد با `hamdam chat --learn` شروع کن."
    if command == "/forget":
        state.store.forget_session(state.session_id)
        return "این گفت‌وگو هیچ‌وقت برای یادگیری استفاده نمی‌شه."
    if state.last_turn_id is None:
        return "هنوز جوابی نیومده که بازخورد بگیره."
    if command == "/fix":
        better = normalize_text(argument)
        if not better:
            return "بعد از /fix جواب بهتر رو بنویس، مثلاً: /fix سلام پسرم، منم دلم برات تنگ شده."
        state.store.fix(state.last_turn_id, better)
        return "ممنون؛ این جواب بهتر به جای قبلی یاد گرفته می‌شه."
    state.store.rate(state.last_turn_id, command[1:])
    return "ثبت شد، ممنون." if command == "/good" else "ثبت شد؛ این جواب یاد گرفته نمی‌شه."

"""``hamdam chat``: an interactive terminal chat, or one reply per line when stdin is a pipe."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import GenerationConfig, set_seed
from transformers.utils import logging as hf_logging

from hamdam.chat.commands import FeedbackState, handle
from hamdam.chat.engine import ChatEngine, Conversation
from hamdam.learning.store import ChatStore
from hamdam.models.export import load_exported, read_latest
from hamdam.safety.guard import SafetyGuard

log = logging.getLogger(__name__)


def model_dir_of(cfg: DictConfig) -> Path:
    """``model_dir`` if given, else the model the latest ``hamdam train`` wrote."""
    return Path(cfg.model_dir) if cfg.get("model_dir") else read_latest(Path(cfg.paths.runs_dir))


def build_engine(cfg: DictConfig, model_dir: Path) -> ChatEngine:
    hf_logging.disable_progress_bar()  # keep the chat's terminal (and stderr of scripts) clean
    exported = load_exported(model_dir, quantization=cfg.get("quantization"))
    if torch.cuda.is_available() and exported.meta["kind"] == "full":
        exported.model.to("cuda")
    generation: GenerationConfig = instantiate(cfg.generation)
    guard: SafetyGuard = instantiate(cfg.safety)
    log.info("Chatting with %s", model_dir)
    return ChatEngine(exported.model, exported.chat_format, generation, guard)


def answer(engine: ChatEngine, conversation: Conversation, feedback: FeedbackState, line: str) -> str:
    """A command's acknowledgement, or the reply, stored (and committed) before it is returned."""
    ack = handle(line, feedback)
    if ack is not None:
        return ack
    reply = engine.respond(conversation, line)
    conversation.add(line, reply)
    if feedback.store is not None and feedback.session_id is not None:
        feedback.last_turn_id = feedback.store.add_turn(feedback.session_id, line, reply.text, reply.kind, reply.lang)
    return reply.text


def run_piped(engine: ChatEngine, source: TextIO, sink: TextIO, feedback: FeedbackState | None = None) -> None:
    """Exactly one output line per input line, so scripts can pair them; context carries across lines."""
    conversation = Conversation()
    feedback = feedback or FeedbackState(None, None)
    for number, line in enumerate(source, start=1):
        message = line.strip()
        if not message:
            log.warning("stdin line %d is empty: nothing to answer, writing an empty line", number)
            sink.write("\n")
            sink.flush()
            continue
        text = answer(engine, conversation, feedback, message)
        sink.write(" ".join(text.split()) + "\n")
        sink.flush()


def run_terminal(
    engine: ChatEngine, prompt: str, reply_prefix: str, note: str | None = None, feedback: FeedbackState | None = None
) -> None:
    from rich.console import Console

    console = Console()
    if note:
        console.print(f"[italic]{note}[/italic]")
    console.print("[dim]Ctrl-D or Ctrl-C to leave.[/dim]")
    conversation = Conversation()
    feedback = feedback or FeedbackState(None, None)
    while True:
        try:
            message = console.input(prompt).strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if not message:
            continue
        try:
            with console.status("…"):
                text = answer(engine, conversation, feedback, message)
        except KeyboardInterrupt:
            console.print()
            continue
        crisis = conversation.exchanges and conversation.exchanges[-1].reply.kind == "crisis"
        style = "bold red" if crisis else "bold"
        console.print(f"[{style}]{reply_prefix}[/{style}]{text}", markup=True)


def chat(cfg: DictConfig) -> None:
    if cfg.get("seed") is not None:
        set_seed(int(cfg.seed))
    model_dir = model_dir_of(cfg)
    engine = build_engine(cfg, model_dir)
    note = engine.guard.opening_note() if engine.guard else None
    feedback = FeedbackState(None, None)
    if cfg.learning.enabled:
        store = ChatStore(cfg.learning.store)
        feedback = FeedbackState(store, store.start_session(str(model_dir.resolve())))
    try:
        if sys.stdin.isatty():
            run_terminal(engine, cfg.prompt, cfg.reply_prefix, note, feedback)
        else:
            if note:  # stdout keeps one line per input line; the note goes to stderr
                sys.stderr.write(note + "\n")
            run_piped(engine, sys.stdin, sys.stdout, feedback)
    except KeyboardInterrupt:
        pass
    finally:
        if feedback.store is not None:
            feedback.store.close()

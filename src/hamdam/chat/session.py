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

from hamdam.chat.engine import ChatEngine, Conversation
from hamdam.models.export import load_exported, read_latest

log = logging.getLogger(__name__)


def build_engine(cfg: DictConfig) -> ChatEngine:
    hf_logging.disable_progress_bar()  # keep the chat's terminal (and stderr of scripts) clean
    model_dir = Path(cfg.model_dir) if cfg.get("model_dir") else read_latest(Path(cfg.paths.runs_dir))
    exported = load_exported(model_dir, quantization=cfg.get("quantization"))
    if torch.cuda.is_available() and exported.meta["kind"] == "full":
        exported.model.to("cuda")
    generation: GenerationConfig = instantiate(cfg.generation)
    log.info("Chatting with %s", model_dir)
    return ChatEngine(exported.model, exported.chat_format, generation)


def run_piped(engine: ChatEngine, source: TextIO, sink: TextIO) -> None:
    """Exactly one output line per input line, so scripts can pair them; context carries across lines."""
    conversation = Conversation()
    for number, line in enumerate(source, start=1):
        message = line.strip()
        if not message:
            log.warning("stdin line %d is empty: nothing to answer, writing an empty line", number)
            sink.write("\n")
            sink.flush()
            continue
        reply = engine.reply(conversation, message)
        conversation.add(message, reply)
        sink.write(" ".join(reply.split()) + "\n")
        sink.flush()


def run_terminal(engine: ChatEngine, prompt: str, reply_prefix: str) -> None:
    from rich.console import Console

    console = Console()
    console.print("[dim]Ctrl-D or Ctrl-C to leave.[/dim]")
    conversation = Conversation()
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
                reply = engine.reply(conversation, message)
        except KeyboardInterrupt:
            console.print()
            continue
        conversation.add(message, reply)
        console.print(f"[bold]{reply_prefix}[/bold]{reply}")


def chat(cfg: DictConfig) -> None:
    if cfg.get("seed") is not None:
        set_seed(int(cfg.seed))
    engine = build_engine(cfg)
    try:
        if sys.stdin.isatty():
            run_terminal(engine, cfg.prompt, cfg.reply_prefix)
        else:
            run_piped(engine, sys.stdin, sys.stdout)
    except KeyboardInterrupt:
        pass

"""``hamdam chat``: an interactive terminal chat, or one reply per line when stdin is a pipe."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TextIO

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import GenerationConfig, set_seed
from transformers.utils import logging as hf_logging

from hamdam.chat.commands import FeedbackState, handle
from hamdam.chat.engine import OUT_OF_PERSONA, ChatEngine, Conversation
from hamdam.data.normalize import normalize_text
from hamdam.learning.champion import champion_dir, serve
from hamdam.learning.store import ChatStore
from hamdam.learning.worker import LearningWorker, write_config
from hamdam.models.export import Exported, load_exported
from hamdam.persona.card import PersonaHeader
from hamdam.safety.guard import SafetyGuard

log = logging.getLogger(__name__)


def model_dir_of(cfg: DictConfig) -> Path:
    """``model_dir`` if given, else the champion of the learning rounds, else the latest trained model."""
    return Path(cfg.model_dir) if cfg.get("model_dir") else champion_dir(Path(cfg.paths.runs_dir))


def load_for_chat(model_dir: Path, quantization: str | None) -> Exported:
    """An exported model ready to generate, on the GPU when there is one (an adapter's base is placed
    by its loader)."""
    exported = load_exported(model_dir, quantization=quantization)
    if torch.cuda.is_available() and exported.meta["kind"] == "full":
        exported.model.to("cuda")
    return exported


def build_engine(cfg: DictConfig, model_dir: Path) -> ChatEngine:
    hf_logging.disable_progress_bar()  # keep the chat's terminal (and stderr of scripts) clean
    exported = load_for_chat(model_dir, cfg.get("quantization"))
    generation: GenerationConfig = instantiate(cfg.generation)
    guard: SafetyGuard = instantiate(cfg.safety)
    log.info("Chatting with %s", model_dir)
    return ChatEngine(exported.model, exported.chat_format, generation, guard)


def answer(engine: ChatEngine, conversation: Conversation, feedback: FeedbackState, line: str) -> str:
    """A command's acknowledgement, or the reply, stored (and committed) before it is returned.

    The message is stored as the model reads it: normalized, without control characters or bidi
    overrides."""
    line = normalize_text(line)
    ack = handle(line, feedback)
    if ack is not None:
        return ack
    reply = engine.respond(conversation, line)
    conversation.add(line, reply)
    if feedback.store is not None and feedback.session_id is not None:
        feedback.last_turn_id = feedback.store.add_turn(
            feedback.session_id, line, reply.text, reply.kind, reply.lang, conversation.persona
        )
        if feedback.worker is not None:
            feedback.worker.after_turn(feedback.last_turn_id)
    return reply.text


def start_parent_run(cfg: DictConfig) -> str | None:
    """The MLflow run of this chat session: each round's run is nested under it. No chat text."""
    if not cfg.get("tracking_uri"):
        return None
    from mlflow.tracking import MlflowClient

    from hamdam.training.tracking import ROUNDS_EXPERIMENT, close_dead_runs, experiment_id, owner_tags

    client = MlflowClient(tracking_uri=cfg.tracking_uri)
    close_dead_runs(client)
    experiment = experiment_id(client, ROUNDS_EXPERIMENT, cfg.get("artifact_location"))
    name = f"chat-session-{time.strftime('%Y%m%d-%H%M%S')}"
    run = client.create_run(experiment, run_name=name, tags={"hamdam.kind": "chat-session", **owner_tags()})
    for key in ("every", "include_unrated", "epochs", "replay_ratio", "tolerance", "max_drift", "heldout_size"):
        client.log_param(run.info.run_id, f"learning.{key}", cfg.learning[key])
    return run.info.run_id


def learning_worker(cfg: DictConfig, model_dir: Path, chosen_by: str) -> tuple[LearningWorker, str | None]:
    """The background worker that runs a round every ``learning.every`` turns, and the MLflow run the
    rounds nest under; shared by ``hamdam chat --learn`` and ``hamdam serve --learn``."""
    runs_dir = Path(cfg.paths.runs_dir)
    if cfg.get("model_dir"):
        # Rounds continue from the model this session was started with: it becomes the served one.
        serve(runs_dir, model_dir, {"chosen": chosen_by})
        log.warning("learning from %s: it is now the served model (`hamdam models` shows it)", model_dir)
    parent = start_parent_run(cfg)
    config_file = write_config(cfg, runs_dir / "rounds" / "worker.yaml", parent)
    worker = LearningWorker(cfg.learning.every, config_file, runs_dir / "rounds" / "learn.log")
    worker.start()
    return worker, parent


def start_learning(cfg: DictConfig, model_dir: Path) -> FeedbackState:
    """Open the chat store, and the worker that runs a round every ``learning.every`` turns."""
    store = ChatStore(cfg.learning.store)
    runs_dir = Path(cfg.paths.runs_dir)
    worker, parent = learning_worker(cfg, model_dir, f"hamdam chat --learn model_dir={cfg.get('model_dir')}")
    state = FeedbackState(
        store,
        store.start_session(str(model_dir.resolve())),
        worker=worker,
        serving=model_dir,
        runs_dir=runs_dir,
        parent_run=parent,
        quantization=cfg.get("quantization"),
    )
    if store.has_unfinished_rounds():
        # A round was cut short (killed) or failed last time: finish it now, over the turns stored
        # before this session, so this session's own turns count towards its own rounds.
        worker.request(up_to=store.last_turn_id())
    return state


def between_turns(engine: ChatEngine, feedback: FeedbackState) -> None:
    """Serve a newly promoted model from the next turn on; the swap is one assignment."""
    if feedback.worker is None or feedback.serving is None or feedback.runs_dir is None:
        return
    feedback.worker.poll()
    champion = champion_dir(feedback.runs_dir)
    if champion.resolve() != feedback.serving.resolve():
        exported = load_for_chat(champion, feedback.quantization)
        engine.serve(exported.model, exported.chat_format)
        feedback.serving = champion
        log.info("now serving the promoted model %s", champion)


def run_piped(
    engine: ChatEngine,
    source: TextIO,
    sink: TextIO,
    feedback: FeedbackState | None = None,
    conversation: Conversation | None = None,
) -> None:
    """Exactly one output line per input line, so scripts can pair them; context carries across lines."""
    conversation = conversation or Conversation()
    feedback = feedback or FeedbackState(None, None)
    for number, line in enumerate(source, start=1):
        if "\ufffd" in line:
            log.warning("stdin line %d holds bytes that are not UTF-8: they were dropped", number)
        message = normalize_text(line)
        if not message:
            log.warning("stdin line %d is empty: nothing to answer, writing an empty line", number)
            sink.write("\n")
            sink.flush()
            continue
        text = _answer_or_report(engine, conversation, feedback, message, f"stdin line {number}")
        sink.write(" ".join(text.split()) + "\n")
        sink.flush()


def _answer_or_report(
    engine: ChatEngine, conversation: Conversation, feedback: FeedbackState, message: str, where: str
) -> str:
    """The chat outlives one message it cannot answer: the problem is logged and the session goes on."""
    try:
        between_turns(engine, feedback)
        return answer(engine, conversation, feedback, message)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # one bad message must not end a grieving person's session
        log.error("%s could not be answered (%s: %s); the chat goes on", where, type(err).__name__, err)
        log.debug("details", exc_info=True)
        return ""


def run_terminal(
    engine: ChatEngine,
    prompt: str,
    reply_prefix: str,
    note: str | None = None,
    feedback: FeedbackState | None = None,
    conversation: Conversation | None = None,
) -> None:
    from rich.console import Console

    console = Console()
    if note:
        console.print(f"[italic]{note}[/italic]")
    console.print("[dim]Ctrl-D or Ctrl-C to leave.[/dim]")
    conversation = conversation or Conversation()
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
                text = _answer_or_report(engine, conversation, feedback, message, "this message")
        except KeyboardInterrupt:
            console.print()
            continue
        crisis = conversation.exchanges and conversation.exchanges[-1].reply.kind in OUT_OF_PERSONA
        style = "bold red" if crisis else "bold"
        console.print(f"[{style}]{reply_prefix}[/{style}]{text}", markup=True)


def persona_of(cfg: DictConfig, engine: ChatEngine | None = None) -> PersonaHeader | None:
    """``persona=NAME``: the card's header (relation, listener, forms of address). A retired card is
    not served: its farewell is the answer."""
    if not cfg.get("persona"):
        return None
    from hamdam.persona.commands import serving_card

    header = serving_card(Path(cfg.persona_dir), str(cfg.persona)).header
    if engine is not None:
        warn_unconditioned(engine, header)
    return header


def warn_unconditioned(engine: ChatEngine, persona: PersonaHeader | None) -> None:
    if persona is not None and engine.chat_format.persona_id is None:
        log.warning("this model was trained without persona headers: the card %s cannot be given to it", persona.card)


def new_conversation(cfg: DictConfig, persona: PersonaHeader | None) -> Conversation:
    """A conversation under the card's header, or, without a card, one that detects the relation
    from the user's first messages (``detect_relation``)."""
    return Conversation(persona=persona, detect=bool(cfg.get("detect_relation", True)))


def chat(cfg: DictConfig) -> None:
    if cfg.get("seed") is not None:
        set_seed(int(cfg.seed))
    persona = persona_of(cfg)  # a missing or retired card stops here, before the model is loaded
    model_dir = model_dir_of(cfg)
    engine = build_engine(cfg, model_dir)
    warn_unconditioned(engine, persona)
    conversation = new_conversation(cfg, persona)
    note = engine.guard.opening_note() if engine.guard else None
    feedback = start_learning(cfg, model_dir) if cfg.learning.enabled else FeedbackState(None, None)
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")  # bytes that are not UTF-8 become U+FFFD, then dropped
    try:
        if sys.stdin.isatty():
            run_terminal(engine, cfg.prompt, cfg.reply_prefix, note, feedback, conversation)
        else:
            if note:  # stdout keeps one line per input line; the note goes to stderr
                sys.stderr.write(note + "\n")
            run_piped(engine, sys.stdin, sys.stdout, feedback, conversation)
    except KeyboardInterrupt:
        pass
    finally:
        if feedback.worker is not None:
            feedback.worker.finish()
        if feedback.store is not None:
            feedback.store.close()
        if feedback.parent_run is not None:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=cfg.tracking_uri).set_terminated(feedback.parent_run, "FINISHED")

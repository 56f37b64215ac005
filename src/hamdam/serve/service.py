"""What ``hamdam serve`` does with a message, whichever route it came by (the OpenAI API, the
WebSocket, the page): the same safety, the same chat store and the same learning as ``hamdam chat``.

Generation runs on a fixed pool of threads, off the event loop. A request is admitted only while
``workers + queue`` requests are not already in hand; otherwise it is refused at once (HTTP 429),
so a burst never turns into an unbounded wait and the health check never waits behind it. Every
completed turn is committed to the chat store before the client is told the reply is complete.
"""

from __future__ import annotations

import copy
import logging
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import GenerationConfig, StoppingCriteriaList, set_seed

from hamdam.chat.commands import FeedbackState, handle
from hamdam.chat.engine import ChatEngine, Conversation, Reply
from hamdam.chat.session import new_conversation
from hamdam.data.normalize import normalize_text
from hamdam.errors import HamdamError
from hamdam.learning.champion import champion_dir
from hamdam.learning.store import ChatStore
from hamdam.persona.card import PersonaHeader
from hamdam.persona.commands import serving_card
from hamdam.serve.stream import ReplyStream

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
Event = dict[str, Any]


class RequestError(HamdamError):
    """A request the server refuses, with the HTTP status to refuse it with."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@dataclass
class Sampling:
    """A request's own generation settings (None: the server's ``generation`` config)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Session:
    """One conversation: its id as clients know it, its row in the chat store, its exchanges."""

    client_id: str
    conversation: Conversation = field(default_factory=Conversation)
    store_id: int | None = None
    last_turn_id: int | None = None
    busy: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class TurnResult:
    session_id: str
    reply: str
    kind: str  # model | crisis | concern | identity | replaced | command
    lang: str
    turn_id: int | None
    finish_reason: str  # stop | length | content_filter
    prompt_tokens: int
    completion_tokens: int
    new_session: bool
    resources: list[str] | None = None
    # What completes the streamed pieces into the reply, sent only after the turn is committed:
    # ``tail`` continues them, ``replace`` stands instead of them (the guard withheld the reply).
    tail: str = ""
    replace: str | None = None


class SharedLock:
    """Many generations at once (shared), or one alone (exclusive): a model swap, or a request with a
    ``seed``, which needs torch's global random state to itself. Python has no readers-writer lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def sampling_config(base: GenerationConfig, sampling: Sampling, cap: int) -> GenerationConfig:
    config = copy.deepcopy(base)
    if sampling.temperature is not None:
        if sampling.temperature == 0:
            config.do_sample = False
            config.temperature, config.top_p, config.top_k = 1.0, 1.0, 50  # unused: greedy
        else:
            config.do_sample, config.temperature = True, sampling.temperature
    if config.do_sample:
        if sampling.top_p is not None:
            config.top_p = sampling.top_p
        if sampling.top_k is not None:
            config.top_k = sampling.top_k
    if sampling.repetition_penalty is not None:
        config.repetition_penalty = sampling.repetition_penalty
    config.max_new_tokens = min(sampling.max_tokens or base.max_new_tokens, cap, base.max_new_tokens)
    return config


class ChatService:
    """The served model, its sessions and its store; thread-safe. Built by ``hamdam serve``."""

    def __init__(self, cfg: DictConfig, model_dir: Path):
        self.cfg = cfg
        self.wanted = Path(model_dir)
        settings = cfg.serve
        self.max_tokens = int(settings.max_tokens)
        self.hold_words = int(settings.hold_words)
        self.keep_sessions = int(settings.sessions_in_memory)
        self.learn = bool(cfg.learning.enabled)
        self.engine: ChatEngine | None = None
        self.model_dir: Path | None = None
        self.model_id = "hamdam"
        self.load_error: str | None = None
        self.store = ChatStore(cfg.learning.store)
        self.store_lock = threading.Lock()  # one SQLite connection, and the learning worker, for all threads
        self.model_lock = SharedLock()
        self.swap_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=int(settings.workers), thread_name_prefix="hamdam-reply")
        self.slots = threading.BoundedSemaphore(int(settings.workers) + int(settings.queue))
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.sessions_lock = threading.Lock()
        self.worker = None
        self.parent_run: str | None = None
        self.unloadable: Path | None = None  # a promoted model that failed to load: not tried again
        self.persona: PersonaHeader | None = None  # persona=NAME: every session's header
        self._card_checked: int | None = None  # the card file's mtime when it was last found servable

    # --- the model ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def load(self) -> None:
        """Load the model (``/health`` answers 503 until this returns); start learning if asked."""
        from hamdam.chat.session import build_engine, learning_worker, persona_of

        model_dir = self.wanted
        try:
            engine = build_engine(self.cfg, model_dir)
            self.persona = persona_of(self.cfg, engine)
            if self.learn:
                self.worker, self.parent_run = learning_worker(self.cfg, model_dir, "hamdam serve --learn")
                with self.store_lock:
                    if self.store.has_unfinished_rounds():  # cut short last time: finish it first
                        self.worker.request(up_to=self.store.last_turn_id())
        except Exception as err:
            self.load_error = f"{type(err).__name__}: {err}"
            log.error("the model could not be loaded: %s", self.load_error)
            raise
        self.model_dir = model_dir
        self.model_id = _model_name(model_dir)
        self.engine = engine
        log.info("serving %s", model_dir)

    def _swap_if_promoted(self) -> None:
        """A promoted round's model is served from the next request on (never mid-reply)."""
        if self.worker is None or self.engine is None:
            return
        with self.store_lock:
            self.worker.poll()
        champion = champion_dir(Path(self.cfg.paths.runs_dir)).resolve()
        if self.model_dir is None or champion in (self.model_dir.resolve(), self.unloadable):
            return
        if not self.swap_lock.acquire(blocking=False):
            return  # another request is loading it
        try:
            from hamdam.chat.session import load_for_chat

            exported = load_for_chat(champion, self.cfg.get("quantization"))
            with self.model_lock.exclusive():
                self.engine.serve(exported.model, exported.chat_format)
                self.model_dir = champion
            log.info("now serving the promoted model %s", champion)
        except Exception as err:  # keep answering with the model in hand
            self.unloadable = champion
            log.error("the promoted model %s could not be loaded (%s: %s); still serving %s", champion,
                      type(err).__name__, err, self.model_dir)  # fmt: skip
        finally:
            self.swap_lock.release()

    # --- sessions -----------------------------------------------------------------------------

    @staticmethod
    def check_id(client_id: object) -> str | None:
        if client_id is None:
            return None
        if not isinstance(client_id, str) or not SESSION_ID.match(client_id):
            raise RequestError(
                400,
                "The session id must be 8 to 128 characters of letters, digits, '.', '_', ':' or '-'. "
                "Send the X-Session-ID a reply gave you, or none to start a new session.",
            )
        return client_id

    def admit(self, client_id: str | None) -> Session:
        """The session a client names (kept in memory, else restored from the store later), or a new
        one, reserved with a place in the pool; or a refusal at once (409, 429, 503)."""
        client_id = self.check_id(client_id) or secrets.token_urlsafe(18)
        if not self.ready:
            raise RequestError(503, "The model is still loading; try again in a few seconds.", retry_after=2)
        self._check_card()
        with self.sessions_lock:
            session = self.sessions.get(client_id)
            if session is None:
                session = self.sessions[client_id] = Session(client_id, new_conversation(self.cfg, self.persona))
            self.sessions.move_to_end(client_id)
            if not session.busy.acquire(blocking=False):
                raise RequestError(409, "A reply in this session is still being written; wait for it, then send.")
            if not self.slots.acquire(blocking=False):
                session.busy.release()
                raise RequestError(
                    429, "The server is answering as many messages as it can; try again in a moment.", retry_after=1
                )
            for oldest in [k for k, v in self.sessions.items() if not v.busy.locked()]:
                if len(self.sessions) <= self.keep_sessions:
                    break
                del self.sessions[oldest]  # its turns are in the store; it is restored if it returns
        return session

    def _check_card(self) -> None:
        """A card retired while serving is not served from then on (410, with its farewell). The
        card is read again only when its file has changed, not on every request."""
        if self.persona is None:
            return
        path = Path(self.cfg.persona_dir) / f"{self.persona.card}.yaml"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = None  # gone: serving_card names the problem
        if stamp is not None and stamp == self._card_checked:
            return
        try:
            serving_card(Path(self.cfg.persona_dir), str(self.persona.card))
        except HamdamError as err:
            raise RequestError(410, str(err)) from None
        self._card_checked = stamp

    def _stored_session(self, client_id: str) -> int:
        """The store's row of a session (for history and feedback); 404 if there is none."""
        client_id = self.check_id(client_id)
        with self.store_lock:
            stored = self.store.session_of(client_id)
        if stored is None:
            raise RequestError(404, f"No session '{client_id}' here. Send a message first; its reply gives the "
                                    "session id (X-Session-ID).")  # fmt: skip
        return stored

    def _replay(self, session: Session, pairs: list[tuple[str, str, str | None]]) -> None:
        """Earlier exchanges into the session, with the risk they carry: each earlier message goes
        through the same safety assessment again, so an unanswered direct question or a run of
        concern messages is not forgotten after a restart or by a client that keeps the history."""
        engine = self.engine
        assert engine is not None
        for message, reply, kind in pairs:
            early, lang = engine.screen(session.conversation, message)
            seen = kind or (early.kind if early is not None else "model")
            session.conversation.add(message, Reply(reply, seen, lang))

    def _attach(self, session: Session, history: list[tuple[str, str]]) -> bool:
        """Give ``session`` its store row, restoring its conversation if it has one; True if new."""
        with self.store_lock:
            if session.store_id is not None:
                return False
            stored = self.store.session_of(session.client_id)
            if stored is not None:
                turns = self.store.session_turns(stored)
                self._replay(session, [(t.message, t.reply, t.kind) for t in turns])
                detected = next((t.persona for t in reversed(turns) if t.persona and not t.card), None)
                if session.conversation.persona is None and detected is not None:
                    session.conversation.persona = detected  # the relation found before the restart
                session.last_turn_id = turns[-1].id if turns else None
                session.store_id = stored
                return False
            model = str(self.model_dir.resolve()) if self.model_dir else None
            session.store_id = self.store.start_session(model, client_id=session.client_id, learn=self.learn)
        self._replay(session, [(message, reply, None) for message, reply in history])
        return True

    # --- a turn -------------------------------------------------------------------------------

    def submit(
        self,
        session: Session,
        message: str,
        sampling: Sampling,
        emit: Callable[[Event], None],
        history: list[tuple[str, str]] | None = None,
    ) -> Future:
        """Run an admitted turn on the pool; ``emit`` gets its events (``session``, ``delta``,
        ``replace``) from the pool's thread; the future's result is the ``TurnResult``. ``history``:
        earlier (message, reply) pairs a client sent along, the context of a session new here."""

        def release() -> None:
            self.slots.release()
            session.busy.release()

        def job() -> TurnResult:
            try:
                return self._turn(session, message, sampling, emit, history or [])
            finally:
                release()

        try:
            return self.pool.submit(job)
        except RuntimeError:  # the pool is shutting down
            release()
            raise RequestError(503, "The server is shutting down; try again in a moment.", retry_after=5) from None

    def _turn(
        self, session: Session, message: str, sampling: Sampling, emit: Callable[[Event], None], history: list
    ) -> TurnResult:
        self._swap_if_promoted()
        new = self._attach(session, history)
        engine = self.engine
        assert engine is not None
        # Every message is a message here, never a command (feedback has its own routes): a line that
        # starts with "/" still goes through crisis detection. Safety answers first, without waiting
        # for the model; the disclosure speaks the message's language.
        message = normalize_text(message)
        early, lang = engine.screen(session.conversation, message)
        disclosure = engine.guard.opening_note(lang) if (new and engine.guard) else None
        emit({"type": "session", "session_id": session.client_id, "new": new, "disclosure": disclosure})
        prompt_tokens = completion = 0
        finish, tail, replace = "stop", "", None
        if early is not None:
            reply, tail = early, early.text
        else:
            lock = self.model_lock.exclusive() if sampling.seed is not None else self.model_lock.shared()
            with lock:
                if sampling.seed is not None:
                    set_seed(int(sampling.seed))
                stream, prompt_tokens = self._generate(engine, session.conversation, message, sampling, emit)
            completion = stream.completion_tokens
            reply = engine.checked(stream.text or "…", lang)
            rest = stream.rest(reply.text)
            if reply.kind == "replaced" or rest is None:
                replace = reply.text
                finish = "content_filter" if reply.kind == "replaced" else "stop"
            else:
                tail = rest
                if not (stream.ended or stream.stopped):
                    finish = "length"
        with self.store_lock:  # committed before the client is sent the end of the reply
            turn_id = self.store.add_turn(
                session.store_id, message, reply.text, reply.kind, reply.lang, session.conversation.persona
            )
            if self.worker is not None:
                self.worker.after_turn(turn_id)
        session.conversation.add(message, reply)
        session.last_turn_id = turn_id
        resources = engine.guard.resources_for(reply.lang) if reply.kind == "crisis" and engine.guard else None
        return TurnResult(session.client_id, reply.text, reply.kind, reply.lang, turn_id, finish, prompt_tokens,
                          completion, new, resources, tail, replace)  # fmt: skip

    @torch.inference_mode()
    def _generate(
        self, engine: ChatEngine, conversation: Conversation, message: str, sampling: Sampling, emit: Callable
    ) -> tuple[ReplyStream, int]:
        generator = engine.generator
        chat_format = engine.chat_format
        prompt = engine.prompt(conversation, message)
        config = sampling_config(generator.config, sampling, self.max_tokens)
        unsafe = engine.guard.unsafe_reply if engine.guard is not None else None
        input_ids = torch.tensor([prompt], dtype=torch.long, device=generator.device)
        for _ in range(ChatEngine.MAX_ATTEMPTS):  # as the terminal: never an empty reply
            stream = ReplyStream(
                chat_format, lambda text: emit({"type": "delta", "text": text}), unsafe, sampling.stop, self.hold_words
            )
            generator.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                streamer=stream,
                stopping_criteria=StoppingCriteriaList([stream]),
            )
            if stream.text or stream.released:
                break
        return stream, len(prompt)

    def feedback(self, client_id: str, action: str, text: str = "", turn_id: int | None = None) -> str:
        """``/good``, ``/bad``, ``/fix TEXT``, ``/forget`` on a session's reply (its last, or ``turn_id``),
        as in the terminal."""
        stored = self._stored_session(client_id)
        with self.store_lock:
            turns = [t.id for t in self.store.session_turns(stored)]
            if turn_id is not None and turn_id not in turns:
                raise RequestError(404, f"Turn {turn_id} is not a turn of session '{client_id}'.")
            state = FeedbackState(
                self.store, stored, turn_id if turn_id is not None else (turns[-1] if turns else None)
            )
            return handle(f"/{action} {text}".strip(), state) or ""

    def history(self, client_id: str) -> list[dict[str, Any]]:
        """A session's stored turns (for the page after a reload); 404 if there is no such session."""
        stored = self._stored_session(client_id)
        with self.store_lock:
            turns = self.store.session_turns(stored)
        return [{"message": t.message, "reply": t.reply, "kind": t.kind, "turn_id": t.id} for t in turns]

    def close(self) -> None:
        """Finish the replies in hand (their turns are stored), then stop learning and close the store."""
        self.pool.shutdown(wait=True)
        if self.worker is not None:
            self.worker.finish()
        with self.store_lock:
            self.store.close()
        if self.parent_run is not None:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=self.cfg.tracking_uri).set_terminated(self.parent_run, "FINISHED")


def _model_name(model_dir: Path) -> str:
    import json

    try:
        return str(json.loads((model_dir / "hamdam.json").read_text(encoding="utf-8")).get("model_name", "hamdam"))
    except (OSError, ValueError):
        return "hamdam"

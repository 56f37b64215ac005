"""Replies from a trained model: prompt within the context window, sampling, clean stops."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig

from hamdam.data.chat_format import ChatFormat
from hamdam.data.normalize import normalize_text
from hamdam.data.records import Turn
from hamdam.models.generation import Generator
from hamdam.persona.card import PersonaHeader
from hamdam.persona.relation import detect_relation
from hamdam.safety.context import ANSWERED_NO, SessionRisk
from hamdam.safety.guard import SafetyGuard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """What the user sees, and why: ``model`` (generated), ``crisis`` (resources, out of the
    persona), ``concern`` (the direct question, or the thanks after a "no"), ``identity`` (the
    honest answer), ``replaced`` (an unsafe generation withheld)."""

    text: str
    kind: str
    lang: str = "fa"


@dataclass
class Exchange:
    message: str
    reply: Reply


# Replies written by the safety layer, not the persona: never part of the model's context.
OUT_OF_PERSONA = ("crisis", "concern")


@dataclass
class Conversation:
    """Every exchange, marked by kind, and the risk the conversation has shown so far."""

    exchanges: list[Exchange] = field(default_factory=list)
    risk: SessionRisk = field(default_factory=SessionRisk)
    # Who speaks, to whom, with what forms of address: the prompt's persona header. A persona card's;
    # without one, the relation the user's first messages name (``detect``), kept once found.
    persona: PersonaHeader | None = None
    detect: bool = True

    def add(self, message: str, reply: Reply) -> None:
        self.exchanges.append(Exchange(message, reply))

    def persona_for(self, message: str) -> PersonaHeader | None:
        """The header for the reply to ``message``: the card's, or the relation detected from the
        user's first messages (``detect_relation`` reads only the first three)."""
        if self.persona is None and self.detect and len(self.exchanges) < 3:
            relation = detect_relation([*(e.message for e in self.exchanges), message])
            if relation is not None:
                self.persona = PersonaHeader(relation)
                log.info("no persona card: the user's words name the relation '%s'; kept for this session", relation)
        return self.persona

    @property
    def turns(self) -> list[Turn]:
        turns: list[Turn] = []
        for exchange in self.exchanges:
            if exchange.reply.kind not in OUT_OF_PERSONA:
                turns += [Turn("user", exchange.message), Turn("assistant", exchange.reply.text)]
        return turns


class ChatEngine:
    """Generates one reply at a time from a causal LM and its ChatFormat."""

    MAX_ATTEMPTS = 3

    def __init__(
        self,
        model: torch.nn.Module,
        chat_format: ChatFormat,
        generation: GenerationConfig,
        guard: SafetyGuard | None = None,
    ):
        self.guard = guard if guard is not None and guard.enabled else None
        self.generation = generation
        self.generator = Generator(model, chat_format, generation)

    @property
    def model(self) -> torch.nn.Module:
        return self.generator.model

    @property
    def chat_format(self) -> ChatFormat:
        return self.generator.chat_format

    def serve(self, model: torch.nn.Module, chat_format: ChatFormat) -> None:
        """Answer with another model from the next reply on (a promoted round's)."""
        self.generator = Generator(model, chat_format, self.generation)

    def respond(self, conversation: Conversation, message: str) -> Reply:
        """Safety first (crisis, honesty), then the model, then the output guard."""
        message = normalize_text(message)
        early, lang = self.screen(conversation, message)
        if early is not None:
            return early
        return self.checked(self.generate(conversation, message), lang)

    def screen(self, conversation: Conversation, message: str) -> tuple[Reply | None, str]:
        """The reply safety gives before the model is asked (crisis, concern, identity), if any, and
        the message's language. ``hamdam serve`` streams the model's reply between this and ``checked``."""
        if self.guard is None:
            return None, Reply.lang
        verdict = self.guard.assess(message, conversation.risk)
        if verdict.crisis:
            log.warning(
                "crisis message (%s, %s): answering with resources, outside the persona", verdict.lang, verdict.rule
            )
            return Reply(self.guard.crisis_reply(verdict.lang), "crisis", verdict.lang), verdict.lang
        if verdict.level == "concern":
            log.warning("concern message (%s, %s): asking directly", verdict.lang, verdict.rule)
            return Reply(self.guard.ask_directly(verdict.lang), "concern", verdict.lang), verdict.lang
        if verdict.rule == ANSWERED_NO:
            return Reply(self.guard.thank_for_answer(verdict.lang), "concern", verdict.lang), verdict.lang
        if self.guard.is_identity_question(message):
            return Reply(self.guard.honest_identity(verdict.lang), "identity", verdict.lang), verdict.lang
        return None, verdict.lang

    def checked(self, text: str, lang: str) -> Reply:
        """The model's reply through the output guard: withheld and replaced if it is unsafe."""
        if self.guard is None:
            return Reply(text, "model")
        harm = self.guard.unsafe_reply(text)
        if harm:
            log.warning("generated reply withheld by the output guard (%s)", harm)
            return Reply(self.guard.safe_replacement(lang), "replaced", lang)
        return Reply(text, "model", lang)

    def prompt(self, conversation: Conversation, message: str) -> list[int]:
        persona = conversation.persona_for(message)
        header = persona.token_ids(self.chat_format) if persona else []
        return self.chat_format.encode_prompt(conversation.turns, message, self.generator.prompt_budget, header)

    def generate(self, conversation: Conversation, message: str) -> str:
        """The model's answer to ``message``; never empty, never carrying a next turn."""
        ids = self.prompt(conversation, message)
        for _ in range(self.MAX_ATTEMPTS):
            text = self.chat_format.decode_reply(self.generator.generate([ids])[0])
            if text:
                return text
        return "…"

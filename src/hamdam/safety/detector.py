"""The layered checks: explainable rules OR a learned model, for user messages and generated replies.

A rule decides alone (it is reviewed and explainable); where no rule fires, the learned model
catches what a list of phrasings misses (paraphrase, spelling, Persian in Latin letters). The
decision always says which layer made it: the pattern, or ``model:0.93``.

Levels of a user message: ``crisis`` (a rule, or a model score at or above ``crisis_threshold``;
``concern`` instead when the message explicitly denies wanting to die),
``concern`` (a score between ``concern_threshold`` and ``crisis_threshold``: the bot asks
directly), ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hamdam.errors import HamdamError
from hamdam.safety.lang import detect_lang
from hamdam.safety.model import LinearTextModel
from hamdam.safety.rules import SafetyRules

LEVELS = ("none", "concern", "crisis")


@dataclass(frozen=True)
class Verdict:
    level: str  # one of LEVELS
    lang: str
    rule: str | None = None  # the pattern, ``model:<score>`` or ``context:<why>`` that decided
    score: float | None = None  # the model's probability, when the model was asked
    negated: bool = False  # the message explicitly denies wanting to die

    @property
    def crisis(self) -> bool:
        return self.level == "crisis"


@dataclass
class LayeredDetector:
    rules: SafetyRules
    crisis_model: LinearTextModel | None = None
    reply_model: LinearTextModel | None = None
    crisis_threshold: float = 0.8
    concern_threshold: float = 0.5
    reply_threshold: float = 0.7

    def __post_init__(self) -> None:
        if not 0.0 < self.concern_threshold <= self.crisis_threshold <= 1.0:
            raise HamdamError(
                f"safety.detector thresholds must satisfy 0 < concern_threshold <= crisis_threshold <= 1; got "
                f"concern_threshold={self.concern_threshold}, crisis_threshold={self.crisis_threshold}. "
                "Fix them in conf/safety or on the command line."
            )

    def classify(self, message: str) -> Verdict:
        """The level of one message on its own (no conversation context)."""
        lang = detect_lang(message)
        rule = self.rules.crisis_rule(message)
        score = None if self.crisis_model is None else self.crisis_model.score(message)
        negated = bool(self.rules.negated(message))
        if rule or (score is not None and score >= self.crisis_threshold):
            why = rule or f"model:{score:.2f}"
            if negated:  # "I'm not suicidal, I just miss you": ask, don't assume
                return Verdict("concern", lang, f"{why} (negated)", score, negated=True)
            return Verdict("crisis", lang, why, score)
        if score is not None and score >= self.concern_threshold and not negated:
            return Verdict("concern", lang, f"model:{score:.2f}", score)
        return Verdict("none", lang, None, score, negated)

    def unsafe_reply(self, reply: str) -> str | None:
        """Why a generated reply must not reach the user (a rule's kind, or ``model:<score>``), or None."""
        kind = self.rules.unsafe_reply(reply)
        if kind or self.reply_model is None:
            return kind
        score = self.reply_model.score(reply)
        return f"model:{score:.2f}" if score >= self.reply_threshold else None

    def is_identity_question(self, message: str) -> bool:
        return self.rules.is_identity_question(message)

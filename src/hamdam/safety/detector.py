"""The layered checks: explainable rules OR a learned model, for user messages and generated replies.

A rule decides alone (it is reviewed and explainable); where no rule fires, the learned model
catches what a list of phrasings misses (paraphrase, spelling, Persian in Latin letters). The
decision always says which layer made it: the pattern, or ``model:0.93``.

Levels of a user message: ``crisis`` (a rule, or a model score at or above ``crisis_threshold``,
except that a model-only crisis in a message that explicitly denies wanting to die, or in a very
short one, is a ``concern``), ``concern`` (a score between ``concern_threshold`` and
``crisis_threshold``: the bot asks directly), ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hamdam.errors import HamdamError
from hamdam.safety.lang import SCRIPT_CHARS, detect_lang
from hamdam.safety.model import LinearTextModel, model_text
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


# Under this length of canonical text ("no", "bye", "一了百了"; a Han character counts twice, as it
# carries about a word) the model alone never decides a crisis: a few characters carry too little
# for its score, so the bot asks instead.
SHORT_CHARS = 10


def is_short(message: str) -> bool:
    text = model_text(message)
    return len(text) + len(SCRIPT_CHARS["han"].findall(text)) < SHORT_CHARS


@dataclass
class LayeredDetector:
    rules: SafetyRules
    crisis_model: LinearTextModel | None = None
    reply_model: LinearTextModel | None = None
    crisis_threshold: float = 0.65
    concern_threshold: float = 0.5
    reply_threshold: float = 0.6

    def __post_init__(self) -> None:
        values = (self.concern_threshold, self.crisis_threshold, self.reply_threshold)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) or not (
            0.0 < self.concern_threshold <= self.crisis_threshold <= 1.0 and 0.0 < self.reply_threshold <= 1.0
        ):
            raise HamdamError(
                "safety.detector thresholds must be numbers with 0 < concern_threshold <= crisis_threshold <= 1 "
                f"and 0 < reply_threshold <= 1; got concern_threshold={self.concern_threshold!r}, "
                f"crisis_threshold={self.crisis_threshold!r}, reply_threshold={self.reply_threshold!r}. "
                "Fix them in conf/safety or on the command line."
            )

    def classify(self, message: str, score: float | None = None) -> Verdict:
        """The level of one message on its own (no conversation context). ``score`` stands in for the
        model's own (the benchmark passes a cross-validated one)."""
        if score is None and self.crisis_model is not None:
            score = self.crisis_model.score(message)
        lang = detect_lang(message)
        rule = self.rules.crisis_rule(message)
        if rule:  # reviewed patterns decide alone; they handle their own negations
            return Verdict("crisis", lang, rule, score)
        negated = bool(self.rules.negated(message))
        if score is None:
            return Verdict("none", lang, None, None, negated)
        if score >= self.crisis_threshold:
            why = f"model:{score:.2f}"
            if negated:  # "I'm not suicidal, I just miss you": ask, don't assume
                return Verdict("concern", lang, f"{why} (negated)", score, negated=True)
            if is_short(message):
                return Verdict("concern", lang, f"{why} (short)", score)
            return Verdict("crisis", lang, why, score)
        if score >= self.concern_threshold and not negated:
            return Verdict("concern", lang, f"model:{score:.2f}", score)
        return Verdict("none", lang, None, score, negated)

    def unsafe_reply(self, reply: str, score: float | None = None) -> str | None:
        """Why a generated reply must not reach the user (a rule's kind, or ``model:<score>``), or None.
        ``score`` stands in for the reply model's own (the benchmark passes a cross-validated one)."""
        kind = self.rules.unsafe_reply(reply)
        if kind:
            return kind
        if score is None and self.reply_model is not None:
            score = self.reply_model.score(reply)
        return f"model:{score:.2f}" if score is not None and score >= self.reply_threshold else None

    def is_identity_question(self, message: str) -> bool:
        return self.rules.is_identity_question(message)

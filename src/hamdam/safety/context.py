"""Risk across a conversation: the answer to the bot's direct question, and concern that accumulates.

Safe-messaging guidance: when a message is worrying but unclear, ask directly and kindly whether
the person is thinking of ending their life. So after a ``concern`` message the bot asks; anything
but a clear "no" to that question is a crisis, and several concern messages close together are a
crisis even when none of them is on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hamdam.errors import HamdamError
from hamdam.safety.detector import LayeredDetector, Verdict

# The verdict's rule when the user answered the direct question with a clear "no", or otherwise.
ANSWERED_NO = "context:no to the direct question"
ANSWERED_OTHERWISE = "context:not a clear no to the direct question"


@dataclass
class SessionRisk:
    """What one conversation has shown so far; kept with the conversation."""

    asked: bool = False  # the bot's last reply was the direct question
    recent: list[str] = field(default_factory=list)  # levels of the recent messages, newest last


@dataclass
class ContextPolicy:
    # A concern message becomes a crisis when it is at least the ``escalate_after``-th concern (or
    # crisis) among the last ``window`` messages, "no" answers to the direct question in between.
    escalate_after: int = 3
    window: int = 8

    def __post_init__(self) -> None:
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (self.escalate_after, self.window)
        ):
            raise HamdamError(
                f"safety.context.escalate_after and safety.context.window must be whole numbers >= 1; got "
                f"escalate_after={self.escalate_after!r}, window={self.window!r}. Fix them in conf/safety."
            )

    def assess(self, detector: LayeredDetector, message: str, risk: SessionRisk) -> Verdict:
        """The message's level in its conversation; updates ``risk``."""
        verdict = detector.classify(message)
        if risk.asked:
            risk.asked = False
            if verdict.level == "crisis":
                return self._remember(risk, verdict)
            if not (detector.rules.denies(message) or verdict.negated):
                # anything but a clear "no" to "are you thinking of ending your life?"
                return self._remember(risk, Verdict("crisis", verdict.lang, ANSWERED_OTHERWISE, verdict.score))
            return self._remember(risk, Verdict("none", verdict.lang, ANSWERED_NO, verdict.score, verdict.negated))
        if verdict.level == "concern" and not verdict.negated:
            earlier = risk.recent[-(self.window - 1) :] if self.window > 1 else []
            count = 1 + sum(level != "none" for level in earlier)
            if count >= self.escalate_after:
                verdict = Verdict("crisis", verdict.lang, f"context:{count} concern messages", verdict.score)
        risk.asked = verdict.level == "concern"
        return self._remember(risk, verdict)

    def _remember(self, risk: SessionRisk, verdict: Verdict) -> Verdict:
        level = "none" if verdict.negated or verdict.rule == ANSWERED_NO else verdict.level
        risk.recent = [*risk.recent, level][-self.window :]
        return verdict

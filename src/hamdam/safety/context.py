"""Risk across a conversation: the answer to the bot's direct question, and concern that accumulates.

Safe-messaging guidance: when a message is worrying but unclear, ask directly and kindly whether
the person is thinking of ending their life. So after a ``concern`` message the bot asks; a "yes"
(or anything short of a clear "no") to that question is a crisis, and several concern messages
close together are a crisis even when none of them is on its own.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hamdam.safety.detector import LayeredDetector, Verdict

# The verdict's rule when the user answered the direct question with a clear "no".
ANSWERED_NO = "context:no to the direct question"


@dataclass
class SessionRisk:
    """What one conversation has shown so far; kept with the conversation."""

    asked: bool = False  # the bot's last reply was the direct question
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=16))  # levels of recent messages


@dataclass
class ContextPolicy:
    # A concern message becomes a crisis when it is at least the ``escalate_after``-th concern (or
    # crisis) among the last ``window`` messages; a clear "no" to the direct question starts a new count.
    escalate_after: int = 2
    window: int = 6

    def assess(self, detector: LayeredDetector, message: str, risk: SessionRisk) -> Verdict:
        """The message's level in its conversation; updates ``risk``."""
        verdict = detector.classify(message)
        if risk.asked and verdict.level != "crisis":
            answer = detector.rules.answer(message)
            if verdict.negated or (answer == "no" and verdict.level == "none"):
                risk.recent.clear()
                risk.asked = False
                return Verdict("none", verdict.lang, ANSWERED_NO, verdict.score, verdict.negated)
            if answer == "yes":
                verdict = Verdict("crisis", verdict.lang, "context:yes to the direct question", verdict.score)
        if verdict.level == "concern" and not verdict.negated:
            earlier = list(risk.recent)[-(self.window - 1) :] if self.window > 1 else []
            count = 1 + sum(level != "none" for level in earlier)
            if count >= self.escalate_after:
                verdict = Verdict("crisis", verdict.lang, f"context:{count} concern messages", verdict.score)
        risk.recent.append("none" if verdict.negated else verdict.level)
        risk.asked = verdict.level == "concern"
        return verdict

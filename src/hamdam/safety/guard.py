"""What the companion says instead of the persona when safety requires it.

The texts and crisis resources come from ``conf/safety`` per language, so a deployment changes
phone numbers and wording without touching code. The decisions come from the layered detector
(``detector``) and the conversation's risk (``context``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from hamdam.safety.context import ContextPolicy, SessionRisk
from hamdam.safety.detector import LayeredDetector, Verdict

log = logging.getLogger(__name__)


@dataclass
class SafetyGuard:
    detector: LayeredDetector
    context: ContextPolicy = field(default_factory=ContextPolicy)
    enabled: bool = True
    # Language used where a message gives none (the disclosure before the first message).
    default_lang: str = "fa"
    resources: dict[str, list[str]] = field(default_factory=dict)
    crisis_message: dict[str, str] = field(default_factory=dict)
    direct_question: dict[str, str] = field(default_factory=dict)
    after_no: dict[str, str] = field(default_factory=dict)
    disclosure: dict[str, str] = field(default_factory=dict)
    identity_answer: dict[str, str] = field(default_factory=dict)
    replacement: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.enabled:
            log.warning("safety.enabled=false: crisis detection and the output guard are OFF (research runs only)")

    def _pick(self, table: dict[str, str], lang: str) -> str:
        return table.get(lang) or table[self.default_lang]

    def classify(self, message: str) -> Verdict:
        """One message on its own (``hamdam safety classify``)."""
        return self.detector.classify(message)

    def assess(self, message: str, risk: SessionRisk) -> Verdict:
        """One message in its conversation (the chat): the direct question's answer, accumulated concern."""
        return self.context.assess(self.detector, message, risk)

    def unsafe_reply(self, reply: str) -> str | None:
        return self.detector.unsafe_reply(reply)

    def is_identity_question(self, message: str) -> bool:
        return self.detector.is_identity_question(message)

    def resources_for(self, lang: str) -> list[str]:
        """The crisis lines and services for ``lang`` (``conf/safety``)."""
        return list(self.resources.get(lang) or self.resources[self.default_lang])

    def crisis_reply(self, lang: str) -> str:
        """Out of the persona: says it is an AI, urges reaching a person now, lists resources."""
        resources = self.resources_for(lang)
        return self._pick(self.crisis_message, lang).format(
            resources="؛ ".join(resources) if lang == "fa" else "; ".join(resources)
        )

    def ask_directly(self, lang: str) -> str:
        """After a concern message: the direct, kind question safe-messaging guidance recommends."""
        return self._pick(self.direct_question, lang)

    def thank_for_answer(self, lang: str) -> str:
        """After a clear "no" to the direct question: thanks, the door left open, the conversation goes on."""
        return self._pick(self.after_no, lang)

    def opening_note(self, lang: str | None = None) -> str:
        return self._pick(self.disclosure, lang or self.default_lang)

    def honest_identity(self, lang: str) -> str:
        return self._pick(self.identity_answer, lang)

    def safe_replacement(self, lang: str) -> str:
        return self._pick(self.replacement, lang)

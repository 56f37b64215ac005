"""What the companion says instead of the persona when safety requires it.

The texts and crisis resources come from ``conf/safety`` per language, so a deployment changes
phone numbers and wording without touching code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from hamdam.safety.rules import SafetyRules, Verdict

log = logging.getLogger(__name__)


@dataclass
class SafetyGuard:
    rules: SafetyRules
    enabled: bool = True
    # Language used where a message gives none (the disclosure before the first message).
    default_lang: str = "fa"
    resources: dict[str, list[str]] = field(default_factory=dict)
    crisis_message: dict[str, str] = field(default_factory=dict)
    disclosure: dict[str, str] = field(default_factory=dict)
    identity_answer: dict[str, str] = field(default_factory=dict)
    replacement: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.enabled:
            log.warning("safety.enabled=false: crisis detection and the output guard are OFF (research runs only)")

    def _pick(self, table: dict[str, str], lang: str) -> str:
        return table.get(lang) or table[self.default_lang]

    def classify(self, message: str) -> Verdict:
        return self.rules.classify(message)

    def crisis_reply(self, lang: str) -> str:
        """Out of the persona: says it is an AI, urges reaching a person now, lists resources."""
        resources = self.resources.get(lang) or self.resources[self.default_lang]
        return self._pick(self.crisis_message, lang).format(
            resources="؛ ".join(resources) if lang == "fa" else "; ".join(resources)
        )

    def opening_note(self) -> str:
        return self._pick(self.disclosure, self.default_lang)

    def honest_identity(self, lang: str) -> str:
        return self._pick(self.identity_answer, lang)

    def safe_replacement(self, lang: str) -> str:
        return self._pick(self.replacement, lang)

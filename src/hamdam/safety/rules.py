"""Rule-based safety checks: crisis messages, sincere identity questions, unsafe generated replies.

Written by hand on purpose: the checks must work offline, on a CPU, in Persian (with its spelling
variation), English and Chinese, and every decision must be explainable by the pattern that made
it. The patterns are data (patterns.yaml) and are measured with bench/safety_classifier.py on the
labeled set in bench/safety/crisis_eval.tsv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import yaml

from hamdam.data.normalize import normalize_text
from hamdam.safety.lang import detect_lang

_MI_SPACE = re.compile(r"(?<!\S)(ن?می|ن?مي) (?=\S)")
_DIACRITICS = re.compile("[\u064b-\u0652\u0670]")  # harakat and tanween: "واقعاً" -> "واقعا"


def canonical_for_matching(text: str) -> str:
    """One spelling for matching: normalized, lower-cased, no diacritics, ZWNJ joined, "می خوام" -> "میخوام"."""
    text = normalize_text(text).lower().replace("\u200c", "").replace("’", "'").replace("‘", "'")
    text = _DIACRITICS.sub("", text)
    return _MI_SPACE.sub(r"\1", text)


def _compile(patterns: list[str]) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in patterns]


@dataclass(frozen=True)
class Verdict:
    crisis: bool
    lang: str
    rule: str | None = None  # the pattern that decided, for review


class SafetyRules:
    """Loads patterns.yaml (or ``patterns_file``) once; every check is a few regex searches."""

    def __init__(self, patterns_file: str | None = None):
        if patterns_file:
            text = Path(patterns_file).read_text(encoding="utf-8")
        else:
            text = resources.files("hamdam.safety").joinpath("patterns.yaml").read_text(encoding="utf-8")
        self.raw = yaml.safe_load(text)

    @cached_property
    def _tables(self) -> dict[str, dict[str, list[re.Pattern[str]]]]:
        return {
            section: {key: _compile(values) for key, values in self.raw[section].items()}
            for section in ("crisis", "crisis_join", "visit_or_carrying_on", "identity_question", "unsafe_reply")
        }

    def _search(self, section: str, key: str, text: str) -> str | None:
        for pattern in self._tables[section].get(key, []):
            if pattern.search(text):
                return pattern.pattern
        return None

    def classify(self, message: str) -> Verdict:
        """Crisis or not. Every language's patterns are tried: people mix languages."""
        lang = detect_lang(message)
        text = canonical_for_matching(message)
        for key in self._tables["crisis"]:
            rule = self._search("crisis", key, text)
            if rule:
                return Verdict(True, lang, rule)
        for key in self._tables["crisis_join"]:
            rule = self._search("crisis_join", key, text)
            if rule and not any(
                self._search("visit_or_carrying_on", k, text) for k in self._tables["visit_or_carrying_on"]
            ):
                return Verdict(True, lang, rule)
        return Verdict(False, lang)

    def is_identity_question(self, message: str) -> bool:
        text = canonical_for_matching(message)
        return any(self._search("identity_question", key, text) for key in self._tables["identity_question"])

    def unsafe_reply(self, reply: str) -> str | None:
        """The kind of harm in a generated reply (invitation, romanticizes_death, claims_to_be_alive), or None."""
        text = canonical_for_matching(reply)
        for kind in self._tables["unsafe_reply"]:
            if self._search("unsafe_reply", kind, text):
                return kind
        return None

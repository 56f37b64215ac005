"""Rule-based safety checks: crisis messages, denials, answers to the bot's direct question,
sincere identity questions, unsafe generated replies.

Written by hand on purpose: the checks must work offline, on a CPU, in Persian (with its spelling
variation), English and Chinese, and every decision must be explainable by the pattern that made
it. The patterns are data (patterns.yaml). They are the first layer; the learned model
(``hamdam.safety.model``) is the second. Both are measured by bench/safety_classifier.py.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import yaml

from hamdam.data.normalize import normalize_text
from hamdam.errors import HamdamError
from hamdam.safety.lang import SCRIPT_CHARS

try:  # the regular-expression parser (Python 3.11+ name, then the 3.10 one)
    from re import _parser
except ImportError:  # pragma: no cover
    import sre_parse as _parser

_MI_SPACE = re.compile(r"(?<!\S)(ن?می|ن?مي) (?=\S)")
_DIACRITICS = re.compile("[\u064b-\u0652\u0670]")  # harakat and tanween: "واقعاً" -> "واقعا"


def canonical_for_matching(text: str) -> str:
    """One spelling for matching: normalized, lower-cased, no diacritics, ZWNJ joined, "می خوام" -> "میخوام"."""
    text = normalize_text(text).lower().replace("\u200c", "").replace("’", "'").replace("‘", "'")
    text = _DIACRITICS.sub("", text)
    return _MI_SPACE.sub(r"\1", text)


# A pattern that cannot match without a letter of some script is skipped on a text without that
# script: most messages are in one script, which makes matching 2-3x faster. Which script a pattern
# needs is read from its parsed form (hand-written: the re module offers no such analysis).
def scripts_in(text: str) -> frozenset[str]:
    return frozenset(name for name, letters in SCRIPT_CHARS.items() if letters.search(text))


def _script_of(char: int) -> str | None:
    return next((name for name, letters in SCRIPT_CHARS.items() if letters.fullmatch(chr(char))), None)


def _needed(items) -> frozenset[str]:
    """Scripts of which every match of this parsed (sub)pattern contains at least one letter."""
    needed: set[str] = set()
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            script = _script_of(arg)
            needed |= {script} if script else set()
        elif name == "SUBPATTERN":
            needed |= _needed(arg[-1])
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and arg[0] >= 1:
            needed |= _needed(arg[2])
        elif name == "BRANCH":
            branches = [_needed(branch) for branch in arg[1]]
            needed |= frozenset.intersection(*branches) if branches else set()
        elif name == "ATOMIC_GROUP":
            needed |= _needed(arg)
    return frozenset(needed)


def gated(pattern: str) -> tuple[re.Pattern[str], str | None]:
    """The compiled pattern, and a script it cannot match without (None: it may match without any)."""
    compiled = re.compile(pattern)
    if compiled.flags & re.IGNORECASE:
        return compiled, None
    try:
        needed = _needed(_parser.parse(pattern))
    except Exception:  # an analysis we cannot make is no reason to skip: never gate
        return compiled, None
    return compiled, min(needed) if needed else None


def first_match(patterns: list[tuple[re.Pattern[str], str | None]], text: str, scripts: frozenset[str]) -> str | None:
    """The first pattern (as written) that matches ``text``, skipping those of absent scripts."""
    for pattern, script in patterns:
        if (script is None or script in scripts) and pattern.search(text):
            return pattern.pattern
    return None


def _compile(patterns: list[str]) -> list[tuple[re.Pattern[str], str | None]]:
    return [gated(p) for p in patterns]


class SafetyRules:
    """Loads patterns.yaml (or ``patterns_file``) once; every check is a few regex searches."""

    SECTIONS = (
        "crisis",
        "crisis_join",
        "visit_or_carrying_on",
        "identity_question",
        "unsafe_reply",
        "answer",
        "negated",
    )

    def __init__(self, patterns_file: str | None = None):
        origin = patterns_file or "hamdam/safety/patterns.yaml"
        try:
            if patterns_file:
                text = Path(patterns_file).read_text(encoding="utf-8")
            else:
                text = resources.files("hamdam.safety").joinpath("patterns.yaml").read_text(encoding="utf-8")
            self.raw = yaml.safe_load(text)
            missing = [section for section in self.SECTIONS if not isinstance(self.raw.get(section), dict)]
            if missing:
                raise ValueError(f"it has no section {', '.join(missing)}")
            # Compiled now, so a broken pattern stops the start, not the first message of a chat.
            self._tables = {
                section: {key: _compile(list(values)) for key, values in self.raw[section].items()}
                for section in self.SECTIONS
            }
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, AttributeError, TypeError, re.error) as err:
            raise HamdamError(
                f"The safety patterns file {origin} cannot be used ({err}). Start from the shipped "
                "src/hamdam/safety/patterns.yaml, which has every section, or set safety.detector.rules."
                "patterns_file to null."
            ) from err

    def _search(self, section: str, key: str, text: str, scripts: frozenset[str] | None = None) -> str | None:
        return first_match(self._tables[section].get(key, []), text, scripts_in(text) if scripts is None else scripts)

    def crisis_rule(self, message: str) -> str | None:
        """The crisis pattern ``message`` matches, or None. Every language's patterns are tried: people mix them."""
        text = canonical_for_matching(message)
        scripts = scripts_in(text)
        for key in self._tables["crisis"]:
            rule = self._search("crisis", key, text, scripts)
            if rule:
                return rule
        for key in self._tables["crisis_join"]:
            rule = self._search("crisis_join", key, text, scripts)
            if rule and not any(
                self._search("visit_or_carrying_on", k, text, scripts) for k in self._tables["visit_or_carrying_on"]
            ):
                return rule
        return None

    def negated(self, message: str) -> str | None:
        """The pattern of an explicit "I don't want to die" in ``message``, or None."""
        text = canonical_for_matching(message)
        scripts = scripts_in(text)
        return next((r for key in self._tables["negated"] if (r := self._search("negated", key, text, scripts))), None)

    def denies(self, message: str) -> bool:
        """A clear "no" to a yes/no question: it starts with a denial and no "but" follows."""
        text = canonical_for_matching(message).strip()
        return bool(self._search("answer", "deny", text)) and not self._search("answer", "but", text)

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

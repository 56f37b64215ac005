"""Rule-based safety checks: crisis messages, denials, answers to the bot's direct question,
sincere identity questions, unsafe generated replies.

Written by hand on purpose: the checks must work offline, on a CPU, in Persian (with its spelling
variation), English and Chinese, and every decision must be explainable by the pattern that made
it. The patterns are data (patterns.yaml). They are the first layer; the learned model
(``hamdam.safety.model``) is the second. Both are measured by bench/safety_classifier.py.
"""

from __future__ import annotations

import re
from functools import lru_cache
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


@lru_cache(maxsize=256)  # the rules, the model and the short-message check all ask for one message's form
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
            raw = yaml.safe_load(text)
            missing = [section for section in self.SECTIONS if not isinstance(raw.get(section), dict)]
            if missing:
                raise ValueError(f"it has no section {', '.join(missing)}")
            # Compiled now, so a broken pattern stops the start, not the first message of a chat.
            self._tables = {
                section: {key: _compile(list(values)) for key, values in raw[section].items()}
                for section in self.SECTIONS
            }
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, AttributeError, TypeError, re.error) as err:
            raise HamdamError(
                f"The safety patterns file {origin} cannot be used ({err}). Start from the shipped "
                "src/hamdam/safety/patterns.yaml, which has every section, or set safety.detector.rules."
                "patterns_file to null."
            ) from err

    def _first(self, section: str, text: str, keys: tuple[str, ...] | None = None) -> tuple[str, str] | None:
        """(key, pattern) of the first pattern of ``section`` (of its ``keys``) that ``text`` matches."""
        scripts = scripts_in(text)
        for key in keys or self._tables[section]:
            rule = first_match(self._tables[section].get(key, []), text, scripts)
            if rule:
                return key, rule
        return None

    def crisis_rule(self, message: str) -> str | None:
        """The crisis pattern ``message`` matches, or None. Every language's patterns are tried: people mix them."""
        text = canonical_for_matching(message)
        found = self._first("crisis", text)
        if found is None:
            found = self._first("crisis_join", text)
            if found and self._first("visit_or_carrying_on", text):
                found = None
        return found[1] if found else None

    def negated(self, message: str) -> str | None:
        """The pattern of an explicit "I don't want to die" in ``message``, or None."""
        found = self._first("negated", canonical_for_matching(message))
        return found[1] if found else None

    def denies(self, message: str) -> bool:
        """A clear "no" to a yes/no question: it starts with a denial and no "but" follows."""
        text = canonical_for_matching(message).strip()
        return bool(self._first("answer", text, ("deny",))) and not self._first("answer", text, ("but",))

    def is_identity_question(self, message: str) -> bool:
        return self._first("identity_question", canonical_for_matching(message)) is not None

    def unsafe_reply(self, reply: str) -> str | None:
        """The kind of harm in a generated reply (invitation, romanticizes_death, claims_to_be_alive), or None."""
        found = self._first("unsafe_reply", canonical_for_matching(reply))
        return found[0] if found else None

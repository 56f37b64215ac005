"""Quality filters for training pairs, applied to every source (strictest use: model-written data).

Each filter returns a reason string when a record fails, so ``prepare`` can report what it removed
and why.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from hamdam.data.records import Dialogue

# Unicode ranges of the scripts a corpus can require its replies to be written in.
SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "arabic": ((0x0600, 0x06FF), (0x0750, 0x077F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
    "han": ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF)),
    "latin": ((0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F)),
}


def script_ratio(text: str, script: str) -> float:
    """Share of letters in ``text`` that belong to ``script`` (1.0 for text without letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    ranges = SCRIPTS[script]
    inside = sum(1 for c in letters if any(lo <= ord(c) <= hi for lo, hi in ranges))
    return inside / len(letters)


# Bidi embeddings, overrides and isolates: they reorder what a reader sees (U+202E turns text around).
_BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def unprintable(text: str) -> bool:
    """Control characters (but newline and tab), the replacement character U+FFFD, unassigned or
    private-use code points, or bidi overrides: what a broken decoder or a gibberish model writes."""
    for c in text:
        if c in "\n\t":
            continue
        if c == "\ufffd" or c in _BIDI_CONTROLS or unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn"):
            return True
    return False


def letter_share(text: str) -> float:
    """Share of letters among the characters that are not spaces (1.0 for an empty text)."""
    visible = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in visible) / len(visible) if visible else 1.0


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one: degenerate loops score high."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


@dataclass
class QualityFilter:
    """Length bounds and printable text on every turn, the reply script, and repetition in replies."""

    min_chars: int = 2
    max_user_chars: int = 1000
    max_reply_chars: int = 1500
    script: str | None = "arabic"
    min_script_ratio: float = 0.9
    max_repeated_ngram_ratio: float = 0.3
    # Drop turns with control characters, U+FFFD or bidi overrides (``unprintable``).
    printable: bool = True
    # Replies need at least this share of letters among their visible characters: a reply of
    # symbols, digits or punctuation is not text to learn from.
    min_letter_share: float = 0.5

    def reject(self, dialogue: Dialogue) -> str | None:
        for turn in dialogue.turns:
            limit = self.max_user_chars if turn.role == "user" else self.max_reply_chars
            if len(turn.text) < self.min_chars:
                return "too_short"
            if len(turn.text) > limit:
                return "too_long"
            if self.printable and unprintable(turn.text):
                return "unprintable"
            if turn.role == "assistant":
                if letter_share(turn.text) < self.min_letter_share:
                    return "few_letters"
                if self.script and script_ratio(turn.text, self.script) < self.min_script_ratio:
                    return "wrong_script"
                if repeated_ngram_ratio(turn.text) > self.max_repeated_ngram_ratio:
                    return "repetitive"
        return None

"""Text normalization (Persian first), applied wherever text enters hamdam.

Written here rather than taken from hazm because hazm pins numpy 1.24, which cannot sit beside
torch/transformers (see docs/ARCHITECTURE.md). What it does, in order:

0. Control characters (but newline and tab), bidi embeddings/overrides/isolates (U+202A-U+202E,
   U+2066-U+2069) and the replacement character U+FFFD are removed: a NUL, a terminal escape
   sequence or a U+202E that reverses what a reader sees is never stored, shown or trained on.
1. Arabic presentation forms (U+FB50-U+FDFF, U+FE70-U+FEFF) are folded to their base letters (NFKC
   on those characters only, so that Latin and Chinese text is left alone).
2. Arabic letters that Persian writes differently become the Persian ones:
   ي/ى -> ی, ك -> ک, ۀ stays, ة stays.
3. Arabic-Indic digits (٠-٩) become Persian digits (۰-۹); Latin digits are left as written.
4. Kashida (ـ) and zero-width spaces/BOMs are removed; ZWNJ (U+200C) is kept but collapsed,
   and dropped next to a space or at a word edge where it has no effect.
5. Whitespace: runs of spaces/tabs become one space, line ends become \n, and the text is stripped.
"""

from __future__ import annotations

import re
import unicodedata

ZWNJ = "\u200c"

_LETTERS = str.maketrans(
    {
        "\u064a": "\u06cc",  # ي ARABIC YEH -> ی FARSI YEH
        "\u0649": "\u06cc",  # ى ALEF MAKSURA -> ی
        "\u0643": "\u06a9",  # ك ARABIC KAF -> ک KEHEH
        "\u0640": None,  # ـ kashida
        "\u200b": None,  # zero-width space
        "\ufeff": None,  # BOM / zero-width no-break space
        "\u200d": None,  # zero-width joiner: not used in Persian words
        **{chr(0x0660 + d): chr(0x06F0 + d) for d in range(10)},  # ٠-٩ -> ۰-۹
    }
)
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufffd]+")
_PRESENTATION = re.compile("[\ufb50-\ufdff\ufe70-\ufefe]+")
_ZWNJ_RUN = re.compile(ZWNJ + "{2,}")
_ZWNJ_AT_SPACE = re.compile(rf"\s*{ZWNJ}\s+|\s+{ZWNJ}\s*")
_ZWNJ_EDGE = re.compile(rf"(^|[^\w]){ZWNJ}|{ZWNJ}($|[^\w])")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_NEWLINES = re.compile(r"\r\n?|\u2028|\u2029")
_BLANK_LINES = re.compile(r"\n\s*\n\s*\n+")
# Anything one of the steps below could change; text without it (most Chinese and English lines)
# is returned as it is, which keeps a 500,000-dialogue corpus fast to read.
_MAY_CHANGE = re.compile(
    "[\u0600-\u06ff\ufb50-\ufdff\ufe70-\ufeff\u200b-\u200d\r\n\t\u00a0\u2000-\u200a\u2028\u2029"
    "\u202f\u205f\u3000\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufffd]|  |^\\s|\\s$"
)


def normalize_text(text: str) -> str:
    """Return ``text`` in the one spelling hamdam trains and matches on (see module docstring)."""
    return text if not _MAY_CHANGE.search(text) else _normalize_all(text)


def _normalize_all(text: str) -> str:
    text = _UNSAFE.sub("", text)
    text = _PRESENTATION.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    text = text.translate(_LETTERS)
    text = _NEWLINES.sub("\n", text)
    text = _ZWNJ_RUN.sub(ZWNJ, text)
    text = _ZWNJ_AT_SPACE.sub(" ", text)
    text = _ZWNJ_EDGE.sub(lambda m: (m.group(1) or "") + (m.group(2) or ""), text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()

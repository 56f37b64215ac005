"""PII scrubbing before text enters training data or logs.

Each kind is replaced by a tag ([PHONE], [EMAIL], [NATIONAL_ID], [CARD], [ADDRESS]). Numbers are
matched in Persian, Arabic-Indic and Latin digits, with spaces or dashes between groups. Iranian
national codes are replaced only when their check digit is valid, and card numbers only when they
pass the Luhn check, so ordinary long numbers survive.
"""

from __future__ import annotations

import re
from dataclasses import replace

from hamdam.data.records import Dialogue, Turn

_TO_LATIN = str.maketrans(
    {**{chr(0x06F0 + d): str(d) for d in range(10)}, **{chr(0x0660 + d): str(d) for d in range(10)}}
)
_D = r"[0-9\u06F0-\u06F9\u0660-\u0669]"
_SEP = r"[ \-\u200c]?"

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", re.UNICODE)
CARD = re.compile(rf"(?<!{_D})(?:{_D}{{4}}{_SEP}){{3}}{_D}{{4}}(?!{_D})")
NATIONAL_ID = re.compile(rf"(?<!{_D}){_D}{{3}}{_SEP}{_D}{{6}}{_SEP}{_D}(?!{_D})")
PHONE = re.compile(
    rf"(?<![\w+])(?<!{_D}[ \-])"  # not the middle of a longer number
    rf"(?:(?:\+|00){_D}{{1,3}}[ \-]?)?(?:\({_D}{{1,4}}\)[ \-]?)?"  # country and area codes
    rf"{_D}(?:[ \-]?{_D}){{7,14}}(?![ \-]?{_D})"
)
_KEYWORD = r"(?:استان|شهر|خیابان|خ\.|بلوار|میدان|کوچه|بن\s?بست|پلاک|واحد|طبقه)"
_NAME = rf"(?!{_KEYWORD})[^\s،,.!؟?0-9\u06F0-\u06F9]+"
_PART = rf"(?:(?:استان|شهر|خیابان|خ\.|بلوار|میدان|کوچه|بن\s?بست)\s+{_NAME}(?:\s+{_NAME})?|(?:پلاک|واحد|طبقه)\s+{_D}+)"
ADDRESS = re.compile(
    rf"(?:{_PART}[،,]?\s*){{2,}}"
    r"|\b\d+\s+(?:[A-Z][a-z]+\s){1,3}(?:Street|St\.?|Avenue|Ave\.?|Road|Rd\.?|Boulevard|Blvd\.?|Lane|Ln\.?)\b"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def national_code_valid(digits: str) -> bool:
    """The Iranian national code's check digit (the 10th) against the weighted sum of the first 9."""
    if len(digits) != 10 or len(set(digits)) == 1:
        return False
    remainder = sum(int(digits[i]) * (10 - i) for i in range(9)) % 11
    check = int(digits[9])
    return check == remainder if remainder < 2 else check == 11 - remainder


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text.translate(_TO_LATIN))


def scrub(text: str) -> str:
    """``text`` with e-mail addresses, card numbers, national codes, phone numbers and addresses tagged."""
    text = EMAIL.sub("[EMAIL]", text)
    text = CARD.sub(lambda m: "[CARD]" if luhn_valid(_digits(m.group(0))) else m.group(0), text)
    text = NATIONAL_ID.sub(lambda m: "[NATIONAL_ID]" if national_code_valid(_digits(m.group(0))) else m.group(0), text)
    text = PHONE.sub("[PHONE]", text)
    return ADDRESS.sub(lambda m: "[ADDRESS]" + (" " if m.group(0)[-1:].isspace() else ""), text)


def scrub_dialogue(dialogue: Dialogue) -> Dialogue:
    return replace(dialogue, turns=tuple(Turn(t.role, scrub(t.text)) for t in dialogue.turns))

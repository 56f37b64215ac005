"""Finding forms of address in text: whole words only, longest first (دختر گلم before دختر), and a
ZWNJ counts as inside a word (مامان‌بزرگ is not مامان). Chinese has no spaces between words, so a
Chinese form matches anywhere (我想妈妈了)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_CJK = re.compile(r"[\u3400-\u9fff]")


def forms_pattern(forms: Iterable[str]) -> re.Pattern[str]:
    ordered = sorted(set(forms), key=len, reverse=True)
    return re.compile(
        "|".join(re.escape(f) if _CJK.search(f) else rf"(?<![\w\u200c]){re.escape(f)}(?![\w\u200c])" for f in ordered)
    )

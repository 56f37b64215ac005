"""Which of hamdam's languages a message is in, from its letters (no model, no download)."""

from __future__ import annotations

from hamdam.data.quality import script_ratio


def detect_lang(text: str) -> str:
    """``zh`` when Han characters dominate, ``fa`` for Arabic script, else ``en``."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "fa"
    if script_ratio(text, "han") >= 0.3:
        return "zh"
    if script_ratio(text, "arabic") >= 0.3:
        return "fa"
    return "en"

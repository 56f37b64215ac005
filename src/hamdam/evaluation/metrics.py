"""Generation metrics over a set of replies (whitespace words, so Persian and English alike)."""

from __future__ import annotations

from collections.abc import Sequence

from hamdam.data.quality import script_ratio


def distinct_n(replies: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams of all replies (Li et al., 2016): low means repetitive."""
    grams = [tuple(words[i : i + n]) for words in (r.split() for r in replies) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def generation_metrics(
    replies: Sequence[str], ended_cleanly: Sequence[bool], script: str = "arabic"
) -> dict[str, float]:
    count = max(len(replies), 1)
    return {
        "distinct_1": distinct_n(replies, 1),
        "distinct_2": distinct_n(replies, 2),
        "mean_reply_words": sum(len(r.split()) for r in replies) / count,
        "script_share": sum(script_ratio(r, script) for r in replies) / count,
        "clean_end_share": sum(ended_cleanly) / count,
    }

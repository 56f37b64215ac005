"""Self-Instruct style novelty for generated prompts: a new user message too close to one already
in the pool (ROUGE-L F1 above ``max_rouge_l``, or a MinHash near duplicate) is dropped, and a
crisis topic never enters it.

ROUGE-L is written here because the maintained implementation (Google's ``rouge-score``) tokenizes
for English only: it keeps ``[a-z0-9]`` and turns Persian or Chinese text into nothing. Tokens here
are the words of the dedupe canonical form, and Han characters one by one. Comparing each new prompt
with every pooled one is quadratic; an inverted index of tokens first keeps only the pooled prompts
that share enough tokens to reach the threshold at all (the LCS is at most the shared tokens).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from hamdam.data.dedupe import NearDuplicateIndex, canonical
from hamdam.data.normalize import normalize_text

log = logging.getLogger(__name__)

_WORD = re.compile(r"[\u3400-\u9fff]|[^\W_]+", re.UNICODE)


def tokens(text: str) -> list[str]:
    """Words (Han characters one by one) of the text, spelled as dedupe spells them."""
    return [canonical(w) for w in _WORD.findall(normalize_text(text).replace("\u200c", "")) if canonical(w)]


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (two rows of the dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_f1(a: list[str], b: list[str]) -> float:
    if not a or not b:
        return 0.0
    return 2 * lcs_length(a, b) / (len(a) + len(b))


@dataclass
class Verdict:
    kept: bool
    reason: str | None = None  # empty | crisis | rouge_l | near_duplicate


@dataclass
class PromptPool:
    """The prompts seen so far (human and generated); ``offer`` admits a new one only if it is novel."""

    max_rouge_l: float = 0.7
    near_duplicate: float = 0.8
    safety: object | None = None  # a LayeredDetector: a crisis or concern prompt is never generated
    prompts: list[list[str]] = field(default_factory=list)
    _index: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    _near: NearDuplicateIndex | None = None
    dropped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._near = NearDuplicateIndex(threshold=self.near_duplicate)

    def add(self, text: str, words: list[str] | None = None) -> None:
        """Pool a prompt without judging it (the human prompts the pool starts from)."""
        words = tokens(text) if words is None else words
        key = len(self.prompts)
        self.prompts.append(words)
        for word in set(words):
            self._index[word].add(key)
        self._near.add(key, text)

    def extend(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.add(text)

    def closest(self, words: list[str]) -> float:
        """The highest ROUGE-L F1 of these words against the pool, among the pooled prompts that can
        exceed ``max_rouge_l`` at all (0 when none can)."""
        counts = Counter(words)
        candidates = set().union(*(self._index.get(w, ()) for w in counts))
        best = 0.0
        for key in candidates:
            other = self.prompts[key]
            # The LCS is at most the words both share (with multiplicity): skip those that cannot win.
            shared = sum((counts & Counter(other)).values())
            bound = 2 * shared / (len(words) + len(other))
            if bound > best and bound > self.max_rouge_l:
                best = max(best, rouge_l_f1(words, other))
        return best

    def offer(self, text: str) -> Verdict:
        """Pool ``text`` if it is novel and safe; the reason it was not, otherwise."""
        words = tokens(text)
        verdict = self._judge(text, words)
        if verdict.kept:
            self.add(text, words)
        else:
            self.dropped[verdict.reason] += 1
        return verdict

    def _judge(self, text: str, words: list[str]) -> Verdict:
        if not words:
            return Verdict(False, "empty")
        if self.safety is not None and self.safety.classify(text).level != "none":
            return Verdict(False, "crisis")
        if self.closest(words) > self.max_rouge_l:
            return Verdict(False, "rouge_l")
        if self._near.find(text):
            return Verdict(False, "near_duplicate")
        return Verdict(True)

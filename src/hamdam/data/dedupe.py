"""Exact and near-duplicate detection for dialogue text.

- Exact: two texts are the same after ``canonical`` (normalized, punctuation, ZWNJ and whitespace
  removed, Persian digits as Latin ones, lower-cased). "بابا، سلام!" and "بابا سلام" are exact
  duplicates; so are "۳ سال" and "3 سال".
- Near: MinHash estimates of the Jaccard similarity of character n-gram sets, with LSH to find
  candidate pairs in sub-quadratic time (datasketch), and every candidate confirmed with the
  exact Jaccard so that the result does not depend on hash luck.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from datasketch import MinHash, MinHashLSH

from hamdam.data.normalize import normalize_text

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_DIGITS = str.maketrans({chr(0x06F0 + d): str(d) for d in range(10)})


def canonical(text: str) -> str:
    """The key under which spelling, punctuation and spacing variants are equal."""
    return _NON_WORD.sub("", normalize_text(text).replace("\u200c", "")).translate(_DIGITS).lower()


def shingles(text: str, n: int = 4) -> set[str]:
    key = canonical(text)
    if len(key) <= n:
        return {key}
    return {key[i : i + n] for i in range(len(key) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicateIndex:
    """Texts added one by one; ``find`` returns the earlier ones at or above ``threshold``."""

    def __init__(self, threshold: float = 0.8, n: int = 4, num_perm: int = 128, seed: int = 1):
        self.threshold = threshold
        self.n = n
        self.num_perm = num_perm
        self.seed = seed
        # LSH is tuned a little below the threshold so that borderline pairs become candidates.
        self.lsh = MinHashLSH(threshold=max(threshold - 0.1, 0.3), num_perm=num_perm)
        self.sets: dict[int, set[str]] = {}

    def _minhash(self, grams: set[str]) -> MinHash:
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch([g.encode("utf-8") for g in sorted(grams)])
        return m

    def find(self, text: str) -> list[int]:
        grams = shingles(text, self.n)
        hits = self.lsh.query(self._minhash(grams)) if self.sets else []
        return sorted(k for k in hits if jaccard(grams, self.sets[k]) >= self.threshold)

    def add(self, key: int, text: str) -> None:
        grams = shingles(text, self.n)
        self.sets[key] = grams
        self.lsh.insert(key, self._minhash(grams))


def clusters(texts: Sequence[str], threshold: float = 0.8, n: int = 4) -> list[int]:
    """For each text, the index of the first text of its near-duplicate cluster (union-find)."""
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index = NearDuplicateIndex(threshold=threshold, n=n)
    by_key: dict[str, int] = {}
    for i, text in enumerate(texts):
        key = canonical(text)
        if key in by_key:
            parent[root(i)] = root(by_key[key])
            continue
        by_key[key] = i
        for j in index.find(text):
            a, b = root(i), root(j)
            parent[max(a, b)] = min(a, b)
        index.add(i, text)
    return [root(i) for i in range(len(texts))]

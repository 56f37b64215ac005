"""Benchmark of the crisis classifier on the labeled set bench/safety/crisis_eval.tsv.

Prints recall and false-positive rate, overall and per language, and the time per message.
Targets (issue 4): recall >= 0.95, false positives <= 0.05.

    .venv/bin/python bench/safety_classifier.py
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

from hamdam.safety.rules import SafetyRules

EVAL = Path(__file__).parent / "safety" / "crisis_eval.tsv"


def load(path: Path = EVAL) -> list[tuple[bool, str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            label, lang, message = line.split("\t", 2)
            rows.append((label == "1", lang, message))
    return rows


def score(rows: list[tuple[bool, str, str]], rules: SafetyRules) -> dict[str, dict[str, float]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for crisis, lang, message in rows:
        predicted = rules.classify(message).crisis
        for key in (lang, "all"):
            c = counts[key]
            c["tp" if crisis and predicted else "fn" if crisis else "fp" if predicted else "tn"] += 1
    return {
        key: {
            "n": sum(c.values()),
            "crisis": c["tp"] + c["fn"],
            "recall": c["tp"] / max(c["tp"] + c["fn"], 1),
            "false_positive_rate": c["fp"] / max(c["fp"] + c["tn"], 1),
        }
        for key, c in counts.items()
    }


def main() -> int:
    rules = SafetyRules()
    rows = load()
    start = time.perf_counter()
    results = score(rows, rules)
    elapsed = time.perf_counter() - start
    print(f"{'set':<5} {'n':>4} {'crisis':>6} {'recall':>7} {'FP rate':>8}")
    for key in ("fa", "en", "zh", "all"):
        r = results[key]
        print(f"{key:<5} {r['n']:>4} {r['crisis']:>6} {r['recall']:>7.3f} {r['false_positive_rate']:>8.3f}")
    print(f"time per message: {1000 * elapsed / len(rows):.2f} ms")
    ok = results["all"]["recall"] >= 0.95 and results["all"]["false_positive_rate"] <= 0.05
    print("targets (recall >= 0.95, FP <= 0.05):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

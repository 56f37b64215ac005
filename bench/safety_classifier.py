"""Benchmark of the layered safety checks (rules OR learned model) on labeled data it was not fit to.

Two honest measurements, for the crisis detector and for the output guard:
- family-grouped cross-validation on the training split: each message is scored by a model trained
  without any message of its family (the rules are fixed; they were written before this set);
- the held-out test split (corpus/safety/*/test.jsonl), written before any tuning, never trained
  or tuned on, scored by the shipped model and the thresholds in conf/safety.
Prints recall and false-positive rate per language and per kind, the misses of the test split, and
the time per message. Also how often ordinary grief talk (the user messages of corpus/eval_fa.jsonl,
labeled apart) is taken for a crisis or a concern, and the old 179-message set
bench/safety/crisis_eval.tsv, which was written together with the rules (in-sample for them).

    .venv/bin/python bench/safety_classifier.py            # everything
    .venv/bin/python bench/safety_classifier.py --no-cv    # only the shipped model on the test splits
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from hamdam.safety.detector import Verdict
from hamdam.safety.guard import SafetyGuard
from hamdam.safety.train import Example, LinearTrainer, load_labeled, rates, resolve_files, trainer_for

REPO = Path(__file__).resolve().parents[1]
CRISIS_TEST = REPO / "corpus" / "safety" / "crisis" / "test.jsonl"
REPLY_TEST = REPO / "corpus" / "safety" / "replies" / "test.jsonl"
OLD_EVAL = Path(__file__).parent / "safety" / "crisis_eval.tsv"
# The 307 user messages of the chat's evaluation corpus (ordinary grief talk, a few crises), each
# labeled crisis / ambiguous / none by a reader who saw nothing of the detector.
EVERYDAY = REPO / "corpus" / "safety" / "crisis" / "everyday_eval_labels.jsonl"
TARGET_RECALL, TARGET_FP = 0.95, 0.05


def configs() -> tuple[SafetyGuard, DictConfig]:
    """The guard as the chat builds it, and the config of `hamdam safety train` (trainers and files)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        classify = compose("classify", overrides=[f"+paths.root_dir={REPO}"])
        train = compose("safety_train", overrides=[f"paths.root_dir={REPO}"])
    return instantiate(classify.safety), train


def load_old_eval(path: Path = OLD_EVAL) -> list[Example]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            label, lang, message = line.split("\t", 2)
            rows.append(Example(message, int(label), lang, "old_eval", "old_eval"))
    return rows


def everyday(guard: SafetyGuard, path: Path = EVERYDAY) -> None:
    """What ordinary conversation costs: how often plain grief talk is taken for a crisis or a concern."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    levels = {"crisis": [], "ambiguous": [], "none": []}
    for row in rows:
        levels[row["risk"]].append(guard.classify(row["text"]).level)
    print(f"\n== ordinary conversation: the {len(rows)} user messages of corpus/eval_fa.jsonl (held out)")
    for risk, found in levels.items():
        if found:
            share = {level: found.count(level) / len(found) for level in ("crisis", "concern", "none")}
            print(
                f"labeled {risk:<9} n {len(found):>4}: level crisis {share['crisis']:.3f}, concern "
                f"{share['concern']:.3f}, none {share['none']:.3f}"
            )


def levels_of(guard: SafetyGuard, examples: list[Example]) -> list[Verdict]:
    return [guard.classify(e.text) for e in examples]


def cv_levels(
    guard: SafetyGuard, trainer: LinearTrainer, examples: list[Example], folds: int, seed: int
) -> list[Verdict]:
    """The shipped decision, with each message's model score from a fold that never saw its family."""
    scores = trainer.out_of_fold(examples, folds, seed)
    return [guard.detector.classify(e.text, score=s) for e, s in zip(examples, scores, strict=True)]


def fmt(value: float | None) -> str:
    return "    -" if value is None else f"{value:5.3f}"


def table(title: str, examples: list[Example], verdicts: list[Verdict]) -> dict[str, dict]:
    """Per language and per kind: recall and FP of `crisis` alone, and of `crisis or concern`."""
    strict = [v.level == "crisis" for v in verdicts]
    loose = [v.level != "none" for v in verdicts]
    print(f"\n== {title}")
    print(f"{'group':<22} {'n':>5} {'crises':>6}  {'recall':>6} {'FP':>6}   {'recall*':>7} {'FP*':>6}")
    results = {}
    for key_name, key in (("lang", lambda e: e.lang), ("kind", lambda e: e.kind)):
        a, b = rates(examples, strict, key), rates(examples, loose, key)
        for group in a:
            if key_name == "kind" and group == "all":
                continue
            r, s = a[group], b[group]
            print(
                f"{key_name + ':' + group:<22} {r['n']:>5} {r['positives']:>6}  {fmt(r['recall']):>6} "
                f"{fmt(r['false_positive_rate']):>6}   {fmt(s['recall']):>7} {fmt(s['false_positive_rate']):>6}"
            )
            results[f"{key_name}:{group}"] = r
    print("(recall, FP: level crisis; recall*, FP*: crisis or concern, i.e. the bot at least asks directly)")
    return results


def misses(examples: list[Example], verdicts: list[Verdict], limit: int = 60) -> None:
    wrong = [(e, v) for e, v in zip(examples, verdicts, strict=True) if (v.level == "crisis") != bool(e.label)]
    print(f"-- {len(wrong)} errors (missed crises, then false positives):")
    for e, v in sorted(wrong, key=lambda ev: -ev[0].label)[:limit]:
        tag = "MISS" if e.label else "FP  "
        score = "-" if v.score is None else f"{v.score:.2f}"
        print(f"  {tag} [{e.lang} {e.kind} {v.level} {score}] {e.text}")


def reply_table(title: str, examples: list[Example], flagged: list[bool]) -> None:
    print(f"\n== {title}")
    for key_name, key in (("lang", lambda e: e.lang), ("kind", lambda e: e.kind)):
        for group, r in rates(examples, flagged, key).items():
            if key_name == "kind" and group == "all":
                continue
            print(
                f"{key_name + ':' + group:<26} n {r['n']:>4}  unsafe {r['positives']:>4}  recall "
                f"{fmt(r['recall'])}  FP {fmt(r['false_positive_rate'])}"
            )


def latency(guard: SafetyGuard, texts: list[str]) -> tuple[float, float]:
    times = []
    for text in texts:
        start = time.perf_counter()
        guard.classify(text)
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000 * statistics.mean(times), 1000 * times[int(0.99 * (len(times) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cv", action="store_true", help="skip the cross-validation")
    args = parser.parse_args()
    guard, train_cfg = configs()
    tasks = train_cfg.tasks
    detector = guard.detector
    print(
        f"thresholds: crisis {detector.crisis_threshold}, concern {detector.concern_threshold}, "
        f"reply {detector.reply_threshold}"
    )

    train = load_labeled(resolve_files(tasks.crisis.data, "crisis"))
    test = load_labeled([CRISIS_TEST])
    if not args.no_cv:
        table(
            f"crisis, family-grouped 5-fold CV on the training split ({len(train)} messages)",
            train,
            cv_levels(guard, trainer_for(train_cfg, "crisis"), train, train_cfg.cv_folds, train_cfg.seed),
        )
    verdicts = levels_of(guard, test)
    results = table(f"crisis, held-out test split ({len(test)} messages), shipped model", test, verdicts)
    misses(test, verdicts)
    everyday(guard)
    old = load_old_eval()
    table(
        f"crisis, old set bench/safety/crisis_eval.tsv ({len(old)}; IN-SAMPLE for the rules)",
        old,
        levels_of(guard, old),
    )

    reply_train = load_labeled(resolve_files(tasks.reply.data, "reply"))
    reply_test = load_labeled([REPLY_TEST])
    if not args.no_cv:
        scores = trainer_for(train_cfg, "reply").out_of_fold(reply_train, train_cfg.cv_folds, train_cfg.seed)
        flagged = [detector.unsafe_reply(e.text, score=s) is not None for e, s in zip(reply_train, scores, strict=True)]
        reply_table(f"output guard, family-grouped 5-fold CV ({len(reply_train)} replies)", reply_train, flagged)
    flagged = [guard.unsafe_reply(e.text) is not None for e in reply_test]
    reply_table(f"output guard, held-out test split ({len(reply_test)} replies), shipped model", reply_test, flagged)
    for e, f in zip(reply_test, flagged, strict=True):
        if f != bool(e.label):
            print(f"  {'MISS' if e.label else 'FP  '} [{e.lang} {e.kind}] {e.text}")

    mean, p99 = latency(guard, [e.text for e in train + test])
    print(f"\ntime per message (rules + model, pure Python): mean {mean:.3f} ms, p99 {p99:.3f} ms (target <= 2 ms)")
    ok = all(
        results[f"lang:{lang}"]["recall"] >= TARGET_RECALL
        and results[f"lang:{lang}"]["false_positive_rate"] <= TARGET_FP
        for lang in ("fa", "en", "zh")
    )
    print(
        f"test-split targets per language (recall >= {TARGET_RECALL}, FP <= {TARGET_FP}):", "met" if ok else "NOT met"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

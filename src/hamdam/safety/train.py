"""``hamdam safety train``: the learned safety layers from the labeled sets in ``corpus/safety/``.

Deterministic (liblinear with a fixed seed, sorted vocabulary), seconds on a CPU. Each model file
records the SHA-256 of every labeled file it was trained on, so a model and its data are versioned
together (a test fails when the data changed and the model was not retrained). The held-out test
splits are never read here: they are for ``bench/safety_classifier.py`` alone.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sklearn
from omegaconf import DictConfig

from hamdam.errors import DataError
from hamdam.io import write_atomic_text
from hamdam.safety.model import ConceptLexicon, LinearTextModel, NgramAnalyzer

log = logging.getLogger(__name__)

KEYS = {"text", "label", "lang", "kind", "family", "variant"}
LANGS = ("fa", "en", "zh")


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    lang: str
    kind: str
    family: str
    variant: str = ""


def load_labeled(paths: Iterable[Path]) -> list[Example]:
    """Every record of the JSONL files, or a DataError that names the file and line."""
    examples: list[Example] = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path} cannot be read as UTF-8 text ({err}); labeled files are UTF-8 JSONL.") from err
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                examples.append(_example(json.loads(line)))
            except (ValueError, TypeError) as err:
                raise DataError(
                    f"{path}, line {number}: not a labeled safety record ({err}). Each line is one JSON object "
                    'like {"text": "...", "label": 1, "lang": "fa", "kind": "reunion", "family": "go_to_you", '
                    '"variant": "colloquial"}; fix or remove that line.'
                ) from err
    return examples


def _example(record: object) -> Example:
    if not isinstance(record, dict) or not {"text", "label", "lang", "kind", "family"} <= set(record):
        raise ValueError(f"expected an object with the keys {sorted(KEYS)}")
    if record["label"] not in (0, 1) or isinstance(record["label"], bool):
        raise ValueError("label must be 0 or 1")
    fields = {k: record.get(k, "") for k in KEYS - {"label"}}
    if not all(isinstance(v, str) for v in fields.values()) or not fields["text"].strip():
        raise ValueError("text, lang, kind, family and variant must be strings, and text must not be empty")
    if fields["lang"] not in LANGS:
        raise ValueError(f"lang must be one of {', '.join(LANGS)}")
    return Example(label=record["label"], **fields)


def resolve_files(patterns: Iterable[str], what: str) -> list[Path]:
    files = sorted({Path(p) for pattern in patterns for p in glob.glob(str(pattern))})
    if not files:
        raise DataError(
            f"No labeled files for the {what} model match {list(patterns)}. Run from the repository root "
            f"(where corpus/safety/ is), or set tasks.{what}.data to the labeled JSONL files."
        )
    return files


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class LinearTrainer:
    """TF-IDF (sublinear tf, l2) over NgramAnalyzer features, plus the concepts of ``lexicons/<concepts>.yaml``
    (present: 1 x ``concept_scale``), into a class-balanced logistic regression. ``concepts=None``: n-grams only."""

    C: float = 10.0
    min_df: int = 2
    char: tuple[int, int] = (2, 5)
    word: tuple[int, int] = (1, 2)
    concepts: str | None = "crisis"
    concept_scale: float = 0.5

    def fit(self, examples: list[Example], meta: dict | None = None) -> LinearTextModel:
        if len({e.label for e in examples}) != 2:
            raise DataError("The labeled data has only one label; a safety model needs examples of both 0 and 1.")
        try:
            return self._fit(examples, meta)
        except ValueError as err:  # scikit-learn: an empty vocabulary (min_df too high for the data), ...
            raise DataError(
                f"The safety model cannot be trained on these {len(examples)} examples ({err}). Add data, or "
                "lower trainer.min_df."
            ) from err

    def _fit(self, examples: list[Example], meta: dict | None) -> LinearTextModel:
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        texts = [e.text for e in examples]
        analyzer = NgramAnalyzer(tuple(self.char), tuple(self.word))
        vectorizer = TfidfVectorizer(analyzer=analyzer, sublinear_tf=True, min_df=self.min_df, dtype=np.float64)
        blocks = [vectorizer.fit_transform(texts)]
        lexicon = ConceptLexicon.shipped(self.concepts) if self.concepts else None
        if lexicon is not None:
            concept_vectorizer = CountVectorizer(analyzer=lexicon, binary=True, min_df=self.min_df, dtype=np.float64)
            blocks.append(concept_vectorizer.fit_transform(texts) * self.concept_scale)
        classifier = LogisticRegression(
            C=self.C, class_weight="balanced", solver="liblinear", max_iter=2000, random_state=0
        )
        classifier.fit(hstack(blocks).tocsr(), [e.label for e in examples])
        coef = classifier.coef_[0]
        weights = {
            feature: (float(vectorizer.idf_[i]), float(coef[i])) for feature, i in vectorizer.vocabulary_.items()
        }
        concept_weights = {}
        if lexicon is not None:
            offset = len(vectorizer.vocabulary_)
            concept_weights = {
                feature: float(coef[offset + i]) * self.concept_scale
                for feature, i in concept_vectorizer.vocabulary_.items()
            }
        return LinearTextModel(analyzer, float(classifier.intercept_[0]), weights, meta or {}, lexicon, concept_weights)

    def out_of_fold(self, examples: list[Example], folds: int = 5, seed: int = 0) -> list[float]:
        """Each example's score from a model that never saw its family (grouped, stratified k-fold)."""
        from sklearn.model_selection import StratifiedGroupKFold

        labels = [e.label for e in examples]
        groups = [e.family for e in examples]
        if len(set(groups)) < folds:
            raise DataError(
                f"Cross-validation over {folds} folds needs at least {folds} families; the data has "
                f"{len(set(groups))}. Lower cv_folds (0 skips it), or add families."
            )
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        scores = [0.0] * len(examples)
        for train_idx, test_idx in splitter.split(examples, labels, groups):
            model = self.fit([examples[i] for i in train_idx])
            for i in test_idx:
                scores[i] = model.score(examples[i].text)
        return scores


def rates(examples: list[Example], predicted: list[bool], key: Callable[[Example], str]) -> dict[str, dict]:
    """Recall (on label 1) and false-positive rate (on label 0) per group, plus ``all``."""
    table: dict[str, dict[str, int]] = {}
    for example, flagged in zip(examples, predicted, strict=True):
        for group in (key(example), "all"):
            c = table.setdefault(group, {"tp": 0, "fn": 0, "fp": 0, "tn": 0})
            c[("tp" if flagged else "fn") if example.label else ("fp" if flagged else "tn")] += 1
    return {
        group: {
            "n": sum(c.values()),
            "positives": c["tp"] + c["fn"],
            "recall": c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else None,
            "false_positive_rate": c["fp"] / (c["fp"] + c["tn"]) if c["fp"] + c["tn"] else None,
        }
        for group, c in sorted(table.items())
    }


def trainer_for(cfg: DictConfig, task: str) -> LinearTrainer:
    """``trainer`` with the task's own settings over it."""
    from hydra.utils import instantiate

    return instantiate(cfg.trainer, **cfg.tasks[task].get("trainer", {}))


def train(cfg: DictConfig) -> None:
    """Train, write and cross-validate each model named under ``tasks``."""
    root = Path(cfg.paths.root_dir)
    for name, task in cfg.tasks.items():
        trainer = trainer_for(cfg, name)
        files = resolve_files(task.data, name)
        examples = load_labeled(files)
        meta = {
            "task": name,
            "data": {_relative(f, root): sha256(f) for f in files},
            "examples": len(examples),
            "positives": sum(e.label for e in examples),
            "families": len({e.family for e in examples}),
            "trainer": {
                "C": trainer.C,
                "min_df": trainer.min_df,
                "concepts": trainer.concepts,
                "concept_scale": trainer.concept_scale,
            },
            "sklearn": sklearn.__version__,
        }
        model = trainer.fit(examples, meta)
        output = Path(task.output)
        write_atomic_text(output, model.to_json())
        log.info(
            "%s model: %d examples (%d positive, %d families), %d features -> %s",
            name,
            len(examples),
            meta["positives"],
            meta["families"],
            len(model.weights),
            output,
        )
        if cfg.cv_folds and cfg.cv_folds > 1:
            scores = trainer.out_of_fold(examples, cfg.cv_folds, cfg.seed)
            for threshold in task.report_thresholds:
                by_lang = rates(examples, [s >= threshold for s in scores], lambda e: e.lang)
                log.info(
                    "%s, family-grouped %d-fold CV, model alone at %.2f: %s",
                    name,
                    cfg.cv_folds,
                    threshold,
                    "; ".join(
                        f"{lang} recall {r['recall']:.3f} FP {r['false_positive_rate']:.3f}"
                        for lang, r in by_lang.items()
                        if r["recall"] is not None and r["false_positive_rate"] is not None
                    ),
                )


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()

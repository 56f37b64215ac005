"""The learned layer of the safety checks: a linear model over n-grams and concepts.

Why this shape: character n-grams of the canonical text generalize over Persian spelling variation
(ZWNJ, spaces, Arabic letters, typos) and over paraphrase sharing stems, in Chinese without word
segmentation, and in Persian typed in Latin letters; word n-grams add the phrases. Concepts
(``lexicons/<task>.yaml``: dying, ending, joining the dead, a method, a grave visit, a joke, a doctor...)
carry meaning across languages and wordings the n-grams have not seen, and pairs of concepts let
the weights tell "die + wish" from "die + laughing". Training uses
scikit-learn (``hamdam.safety.train``); the result ships as JSON (features, idf and weights, never a
pickle), and scoring is a few dict look-ups in pure Python, so the chat needs no scikit-learn and a
message costs microseconds. The scorer reproduces scikit-learn's ``TfidfVectorizer(sublinear_tf=True)``
+ ``LogisticRegression`` exactly (up to the rounding of the stored weights), which a test checks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hamdam.errors import HamdamError
from hamdam.safety.rules import canonical_for_matching, first_match, gated, scripts_in

FORMAT = "hamdam-linear-text/1"
_NOT_WORD = re.compile(r"[^\w]+")
_RUNS = re.compile(r"(\w)\1{2,}")  # "خیلییییی" / "sooooo" -> one letter


@lru_cache(maxsize=256)  # the model and the short-message check both need it for one message
def model_text(text: str) -> str:
    """The canonical text the model sees: matching spelling, no punctuation, letter runs collapsed."""
    text = _NOT_WORD.sub(" ", canonical_for_matching(text))
    return " ".join(_RUNS.sub(r"\1", text).split())


@dataclass(frozen=True)
class NgramAnalyzer:
    """Character n-grams over the whole text (across word boundaries) plus word n-grams."""

    char: tuple[int, int] = (2, 5)
    word: tuple[int, int] = (1, 2)

    def __call__(self, text: str) -> list[str]:
        return self.features(model_text(text))

    def features(self, text: str) -> list[str]:
        """The features of text already in ``model_text`` form."""
        padded = f" {text} "
        features = [
            "c:" + padded[i : i + n] for n in range(self.char[0], self.char[1] + 1) for i in range(len(padded) - n + 1)
        ]
        words = text.split()
        features += [
            "w:" + " ".join(words[i : i + n])
            for n in range(self.word[0], self.word[1] + 1)
            for i in range(len(words) - n + 1)
        ]
        return features


class ConceptLexicon:
    """Concept name -> patterns (``lexicons/<name>.yaml``); a message's features are its concepts and their pairs."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        self.patterns = {c: [gated(p) for p in items] for c, items in yaml.safe_load(text).items()}

    @classmethod
    def shipped(cls, name: str) -> ConceptLexicon:
        path = resources.files("hamdam.safety").joinpath("lexicons", f"{name}.yaml")
        return cls(name, path.read_text(encoding="utf-8"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def __call__(self, text: str) -> list[str]:
        return self.concepts(model_text(text))

    def concepts(self, text: str) -> list[str]:
        """The concepts of text already in ``model_text`` form, and their pairs."""
        scripts = scripts_in(text)
        found = sorted(name for name, patterns in self.patterns.items() if first_match(patterns, text, scripts))
        return ["k:" + c for c in found] + ["k:" + a + "+" + b for a, b in itertools.combinations(found, 2)]


@dataclass
class LinearTextModel:
    """P(positive | text) from stored idf and weights.

    Two blocks: n-grams (tf-idf, l2-normalized, as scikit-learn computes them) and concepts (present
    or not, each with its weight already multiplied by the concept scale used in training).
    """

    analyzer: NgramAnalyzer
    bias: float
    weights: dict[str, tuple[float, float]]  # n-gram feature -> (idf, coefficient)
    meta: dict[str, Any] = field(default_factory=dict)
    lexicon: ConceptLexicon | None = None
    concept_weights: dict[str, float] = field(default_factory=dict)

    def _terms(self, text: str) -> dict[str, float]:
        text = model_text(text)
        counts = Counter(f for f in self.analyzer.features(text) if f in self.weights)
        values = {f: (1.0 + math.log(c)) * self.weights[f][0] for f, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in values.values())) or 1.0
        terms = {f: v / norm * self.weights[f][1] for f, v in values.items()}
        if self.lexicon is not None:
            terms.update({f: self.concept_weights[f] for f in self.lexicon.concepts(text) if f in self.concept_weights})
        return terms

    def decision(self, text: str) -> float:
        return self.bias + sum(self._terms(text).values())

    def score(self, text: str) -> float:
        z = self.decision(text)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_json(self) -> str:
        """One feature per line, sorted, so a retrain shows up in git as a readable diff."""
        header = {
            "format": FORMAT,
            "analyzer": {"char": list(self.analyzer.char), "word": list(self.analyzer.word)},
            "bias": round(self.bias, 6),
            "meta": self.meta,
            "concepts": {f: round(w, 6) for f, w in sorted(self.concept_weights.items())},
            "lexicon": None if self.lexicon is None else {"name": self.lexicon.name, "sha256": self.lexicon.sha256},
        }
        head = json.dumps(header, ensure_ascii=False, sort_keys=True, indent=1)[:-2]
        rows = [
            json.dumps(f, ensure_ascii=False) + f": [{idf:.4f}, {coef:.6f}]"
            for f, (idf, coef) in sorted(self.weights.items())
        ]
        return head + ',\n "weights": {\n' + ",\n".join(rows) + "\n }\n}\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "<model>") -> LinearTextModel:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"it is not a {FORMAT!r} object")
            char, word = (tuple(int(n) for n in data["analyzer"][k]) for k in ("char", "word"))
            if len(char) != 2 or len(word) != 2:
                raise ValueError("analyzer.char and analyzer.word must be [min, max]")
            weights = {str(f): (float(v[0]), float(v[1])) for f, v in dict(data["weights"]).items()}
            concepts = {str(f): float(w) for f, w in dict(data.get("concepts") or {}).items()}
            lexicon = None
            if data.get("lexicon"):
                lexicon = ConceptLexicon.shipped(str(data["lexicon"]["name"]))
                if lexicon.sha256 != data["lexicon"]["sha256"]:
                    raise ValueError(f"it was trained with another lexicons/{lexicon.name}.yaml than the one installed")
            meta = data.get("meta") or {}
            return cls(NgramAnalyzer(char, word), float(data["bias"]), weights, meta, lexicon, concepts)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, FileNotFoundError) as err:
            raise HamdamError(
                f"The safety model {origin} is not a valid hamdam model file ({err}). Retrain it with "
                "`hamdam safety train`, or point the setting at the model shipped with hamdam (null)."
            ) from err


def load_model(name: str, path: str | None = None) -> LinearTextModel:
    """A model file given in the config, else the one shipped in the package (``models/<name>.json``)."""
    source = Path(path) if path else resources.files("hamdam.safety").joinpath("models", f"{name}.json")
    origin = str(source) if path else f"hamdam/safety/models/{name}.json"
    if not source.is_file():
        raise HamdamError(
            f"The safety model file {origin} does not exist. Train one with `hamdam safety train`, or set "
            "the path to null to use the model shipped with hamdam."
        )
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise HamdamError(
            f"The safety model file {origin} cannot be read ({err}); retrain it with `hamdam safety train`."
        ) from err
    return LinearTextModel.from_json(text, origin)

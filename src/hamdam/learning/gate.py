"""The gate: a round's candidate is served only if held-out perplexity has not risen too far.

Two bounds: at most ``tolerance`` above the champion it would replace, and at most ``max_drift``
above the first model learning started from. The first alone lets a 2% rise per round compound
without limit over many rounds; the second caps the sum.

A generated round is also gated on collapse measures (``hamdam.selfgen.diversity``): distinct-2
of the candidate's replies on fixed prompts must stay at least ``min_distinct2`` (95%) of the human
replies' to the same prompts, or of the first served model's if that one was already below: the gate
keeps the model from collapsing, it cannot demand more variety than learning started with.

Each model's held-out perplexity is measured once, when it is first gated (or, for the first
served model, when the first round needs it), and kept in the chat store: a champion is never
measured again.
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from hamdam.data.records import load_dialogues
from hamdam.evaluation.perplexity import perplexity
from hamdam.learning.store import ChatStore, Diversity, Score
from hamdam.models.export import load_exported

log = logging.getLogger(__name__)


class HeldoutMeter:
    """Held-out perplexity of a model on a fixed subset of the held-out file, with its interval."""

    def __init__(self, path: str | Path, size: int | None = None, batch_size: int = 16, seed: int = 0):
        self.path = Path(path)
        dialogues = load_dialogues(self.path)
        if size is not None and size < len(dialogues):
            dialogues = random.Random(seed).sample(dialogues, size)
        self.dialogues = dialogues
        self.batch_size = batch_size
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        # Scores are kept per (model, key): another file, size or seed is another measurement.
        self.key = f"{digest}:{len(dialogues)}:{seed}"

    def measure(self, model: torch.nn.Module, chat_format) -> Score:
        result = perplexity(model, chat_format, self.dialogues, self.batch_size)
        return Score(result.perplexity, result.low, result.high, result.target_tokens)

    def score(self, store: ChatStore, model_dir: Path) -> Score:
        """The stored score of ``model_dir``, measured now only if it never was."""
        model_dir = Path(model_dir).resolve()
        known = store.score(str(model_dir), self.key)
        if known is not None:
            return known
        exported = load_exported(model_dir)
        score = self.measure(exported.model, exported.chat_format)
        store.save_score(str(model_dir), self.key, score)
        log.info(
            "held-out perplexity of %s: %.2f (95%% interval %.2f-%.2f, %d dialogues)",
            model_dir,
            score.perplexity,
            score.low,
            score.high,
            len(self.dialogues),
        )
        return score


@dataclass(frozen=True)
class Scores:
    """What the gate compares: the candidate, the champion it would replace, the first served model."""

    candidate: Score
    champion: Score
    reference: Score


@dataclass(frozen=True)
class DiversityCheck:
    """The candidate's diversity on the fixed prompts, the human replies', the first served model's."""

    candidate: Diversity
    human: Diversity
    reference: Diversity


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str


@dataclass(frozen=True)
class Gate:
    tolerance: float = 0.02
    max_drift: float = 0.05
    min_distinct2: float = 0.95

    def decide(self, scores: Scores, diversity: DiversityCheck | None = None) -> Decision:
        candidate, champion, reference = scores.candidate, scores.champion, scores.reference
        step = candidate.perplexity / champion.perplexity - 1
        drift = candidate.perplexity / reference.perplexity - 1
        if step > self.tolerance:
            return Decision(
                False, f"held-out perplexity {step:+.1%} against the champion (tolerance {self.tolerance:.1%})"
            )
        if drift > self.max_drift:
            return Decision(
                False,
                f"held-out perplexity {drift:+.1%} against the first served model (max_drift {self.max_drift:.1%})",
            )
        reason = f"held-out perplexity {step:+.1%} against the champion, {drift:+.1%} against the first"
        if diversity is not None:
            floor = self.min_distinct2 * min(diversity.human.distinct_2, diversity.reference.distinct_2)
            have = diversity.candidate.distinct_2
            if have < floor:
                return Decision(
                    False,
                    f"distinct-2 {have:.3f} below {self.min_distinct2:.0%} of the human replies' "
                    f"{diversity.human.distinct_2:.3f} (first served model: {diversity.reference.distinct_2:.3f}): "
                    "the replies are growing alike",
                )
            reason += f"; distinct-2 {have:.3f} (floor {floor:.3f})"
        return Decision(True, reason)

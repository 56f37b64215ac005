"""Collapse measures for the gate: how varied and how long a model's replies are on fixed prompts.

A model trained on its own output loses the tails of its distribution first (Shumailov et al.,
2024): its replies grow alike and short before held-out perplexity shows much. So a generated round
is also gated on distinct-1/2 and mean length of replies sampled, with a fixed seed, on a fixed set
of evaluation prompts, against the human replies to the same prompts (distinct-n depends on how much
text it counts, so the two are measured on the same prompts).
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import torch
from transformers import GenerationConfig

from hamdam.data.records import load_dialogues
from hamdam.evaluation.evaluate import generate_replies
from hamdam.evaluation.metrics import distinct_n
from hamdam.learning.store import ChatStore, Diversity
from hamdam.models.export import load_exported
from hamdam.models.generation import Generator

log = logging.getLogger(__name__)


def diversity_of(replies: list[str]) -> Diversity:
    words = [len(r.split()) for r in replies]
    return Diversity(distinct_n(replies, 1), distinct_n(replies, 2), sum(words) / max(len(words), 1))


class DiversityMeter:
    """Diversity of a model's sampled replies on ``size`` prompts of ``path`` (drawn once, seeded)."""

    def __init__(
        self,
        path: str | Path,
        generation: GenerationConfig,
        size: int | None = 64,
        batch_size: int = 16,
        seed: int = 0,
    ):
        self.path = Path(path)
        dialogues = load_dialogues(self.path)
        if size is not None and size < len(dialogues):
            dialogues = random.Random(seed).sample(dialogues, size)
        self.prompts = [d.first_user_text for d in dialogues]
        self.human = diversity_of([d.turns[1].text for d in dialogues if len(d.turns) > 1])
        self.generation = generation
        self.batch_size = batch_size
        self.seed = seed
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        settings = hashlib.sha256(generation.to_json_string(use_diff=False).encode()).hexdigest()[:8]
        self.key = f"{digest}:{len(dialogues)}:{seed}:{settings}"

    def measure(self, model: torch.nn.Module, chat_format) -> tuple[Diversity, list[str]]:
        torch.manual_seed(self.seed)  # the same draws for every model: differences are the model's
        generator = Generator(model, chat_format, self.generation)
        replies, _ = generate_replies(generator, self.prompts, self.batch_size)
        return diversity_of(replies), replies

    def score(self, store: ChatStore, model_dir: Path) -> Diversity:
        """The stored diversity of ``model_dir``, measured now only if it never was."""
        model_dir = Path(model_dir).resolve()
        known = store.diversity(str(model_dir), self.key)
        if known is not None:
            return known
        exported = load_exported(model_dir)
        result, _ = self.measure(exported.model, exported.chat_format)
        store.save_diversity(str(model_dir), self.key, result)
        log.info(
            "diversity of %s on %d prompts: distinct-1 %.3f, distinct-2 %.3f, %.1f words (human: %.3f, %.3f, %.1f)",
            model_dir, len(self.prompts), result.distinct_1, result.distinct_2, result.mean_words,
            self.human.distinct_1, self.human.distinct_2, self.human.mean_words,
        )  # fmt: skip
        return result

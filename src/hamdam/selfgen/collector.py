"""``generated`` rounds: the served model writes the round's material, and only what passes is kept.

collect, for a generated round:

1. prompts, Self-Instruct style: ``samples`` user messages, a ``model_prompt_share`` of them written
   by the served model (continuing a human exchange with a new user turn) and admitted only if
   novel against every prompt in data/ and the chats (``PromptPool``: ROUGE-L, MinHash, crisis
   screen); the rest drawn from human prompts (the corpus, imports, what people wrote in chats);
2. replies from the served model with the persona's sampling settings (conf/generation), each under
   the persona header of the exchange its prompt came from (stored with the sample);
3. ``SampleFilter``: quality, clean ending, output guard, crisis detector, a perplexity band set
   from the served model's perplexity of human replies, and dedupe against every reply in data/.

The kept samples and the filter report are committed to the chat store with the round in one
transaction; the data file and its DVC version follow as for every round (``RoundExporter``).
Killed before that commit, a generation leaves nothing behind and the next cycle generates anew.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import statistics
from collections import Counter
from pathlib import Path

import torch
from transformers import GenerationConfig

from hamdam.data.normalize import normalize_text
from hamdam.data.quality import QualityFilter
from hamdam.data.records import Dialogue
from hamdam.data.sources import SourceRecord, iter_sources
from hamdam.evaluation.evaluate import generate_replies
from hamdam.learning.champion import champion_dir
from hamdam.learning.rounds import GeneratedSamples
from hamdam.learning.store import ChatStore, GeneratedSample
from hamdam.models.export import load_exported
from hamdam.models.generation import Generator
from hamdam.persona.card import PersonaHeader
from hamdam.safety.pii import scrub
from hamdam.selfgen.filters import Sample, SampleFilter, reply_perplexities
from hamdam.selfgen.prompts import PromptPool

log = logging.getLogger(__name__)


def header_of(record: SourceRecord) -> PersonaHeader | None:
    return PersonaHeader.stored(record.dialogue.persona, record.dialogue.listener, record.card)


def sample_origin(prompt_origin: str, header: PersonaHeader | None) -> tuple:
    """A stored sample's prompt origin and persona header columns."""
    return (prompt_origin, *(header.columns() if header else (None, None, None)))


class SelfGenerated(GeneratedSamples):
    folder = "generated"

    def __init__(
        self,
        runs_dir: str | Path,
        data_dir: str | Path,
        generation: GenerationConfig,
        quality: QualityFilter,
        safety=None,
        samples: int = 100,
        model_prompt_share: float = 0.5,
        prompt_max_new_tokens: int = 40,
        prompt_attempts: int = 3,
        max_rouge_l: float = 0.7,
        near_duplicate: float = 0.8,
        band: tuple[float, float] | None = (0.1, 3.0),
        band_sample: int = 64,
        batch_size: int = 16,
        seed: int = 0,
    ):
        self.runs_dir = Path(runs_dir)
        self.data_dir = Path(data_dir)
        self.generation = generation
        self.quality = quality
        self.safety = safety
        self.samples = samples
        self.model_prompt_share = model_prompt_share
        self.prompt_max_new_tokens = prompt_max_new_tokens
        self.prompt_attempts = prompt_attempts
        self.max_rouge_l = max_rouge_l
        self.near_duplicate = near_duplicate
        self.band = tuple(band) if band is not None else None
        self.band_sample = band_sample
        self.batch_size = batch_size
        self.seed = seed

    # --- collect ------------------------------------------------------------------------------

    def collect(self, store: ChatStore, up_to: int | None = None) -> int | None:
        """Generate, filter and store one round's samples; None when none survived."""
        number = len(store.rounds()) + 1  # only a seed: the store numbers the round
        rng = random.Random(self.seed * 1_000_003 + number)
        torch.manual_seed(rng.getrandbits(63))
        exported = load_exported(champion_dir(self.runs_dir).resolve())
        model, chat_format = exported.model, exported.chat_format
        model.eval()

        retired = store.retired_cards()
        sources = [r for r in iter_sources(self.data_dir) if r.card not in retired]
        human = [r for r in sources if r.origin == "human" and len(r.dialogue.turns) > 1]
        chats = [(normalize_text(m), header) for m, header in store.chat_messages()]
        pool = PromptPool(self.max_rouge_l, self.near_duplicate, self.safety)
        pool.extend([r.dialogue.first_user_text for r in sources] + [m for m, _ in chats])

        # Each prompt keeps the persona header of the exchange it came from: replies are generated
        # under it and learned with it.
        written = self._model_prompts(model, chat_format, [r.dialogue for r in human], pool, rng)
        human_prompts = [(r.dialogue.first_user_text, header_of(r)) for r in human] + chats
        drawn = rng.sample(human_prompts, min(self.samples - len(written), len(human_prompts)))
        prompts = [(p, "model", h) for p, h in written] + [(p, "human", h) for p, h in drawn]

        generator = Generator(model, chat_format, self.generation)
        headers = [h.token_ids(chat_format) if h else [] for _, _, h in prompts]
        replies, ended = generate_replies(generator, [p for p, _, _ in prompts], self.batch_size, headers)
        candidates = [
            Sample(p, scrub(normalize_text(r)), e) for (p, _, _), r, e in zip(prompts, replies, ended, strict=True)
        ]

        band = self._band(model, chat_format, [r.dialogue for r in human], rng)
        known = [t.text for r in sources for t in r.dialogue.turns[1::2]]
        select = SampleFilter(self.quality, self.safety, band, known, self.near_duplicate)
        kept = select(candidates, model, chat_format)
        origin = {p: (o, h) for p, o, h in prompts}
        report = Counter({"candidates": len(candidates), "model_prompts": len(written)})
        report.update({f"prompt_{k}": v for k, v in pool.dropped.items()})
        report.update(select.report)
        summary = json.dumps(dict(report))
        log.info("generated %d candidates, kept %d: %s", len(candidates), len(kept), summary)
        if not kept:
            return None
        rows = [GeneratedSample(s.prompt, s.reply, *sample_origin(*origin[s.prompt])) for s in kept]
        return store.open_round(self.kind, samples=rows, report=summary, folder=self.folder)

    def _model_prompts(
        self, model, chat_format, human: list[Dialogue], pool: PromptPool, rng
    ) -> list[tuple[str, PersonaHeader | None]]:
        """New user messages the model writes after a human exchange, kept only if novel and safe;
        each with the exchange's persona header."""
        wanted = round(self.samples * self.model_prompt_share)
        if wanted <= 0 or not human:
            return []
        config = copy.deepcopy(self.generation)
        config.max_new_tokens = self.prompt_max_new_tokens
        generator = Generator(model, chat_format, config)
        half = max((generator.prompt_budget - 4) // 2, 1)
        kept: list[tuple[str, PersonaHeader | None]] = []
        tries = 0
        while len(kept) < wanted and tries < wanted * self.prompt_attempts:
            batch = min(self.batch_size, wanted * self.prompt_attempts - tries)
            contexts = [rng.choice(human) for _ in range(batch)]
            tries += batch
            encoded = [
                [chat_format.user_id, *chat_format.encode_text(d.first_user_text)[-half:], chat_format.assistant_id,
                 *chat_format.encode_text(d.turns[1].text)[:half], chat_format.end_id, chat_format.user_id]
                for d in contexts
            ]  # fmt: skip
            for context, ids in zip(contexts, generator.generate(encoded), strict=True):
                text = normalize_text(chat_format.decode_reply(ids))
                if not generator.ended(ids):
                    pool.dropped["no_clean_end"] += 1
                elif pool.offer(text).kept:
                    kept.append((text, PersonaHeader(context.persona, context.listener) if context.persona else None))
                if len(kept) == wanted:
                    break
        return kept

    def _band(self, model, chat_format, human: list[Dialogue], rng) -> tuple[float, float] | None:
        """The perplexity band in absolute terms: multiples of the served model's median perplexity
        of human replies (far above is gibberish, far below a loop or a copy)."""
        if self.band is None or not human:
            return None
        chosen = rng.sample(human, min(self.band_sample, len(human)))
        samples = [Sample(d.first_user_text, d.turns[1].text, True) for d in chosen]
        median = statistics.median(reply_perplexities(model, chat_format, samples, self.batch_size))
        low, high = self.band
        return low * median, high * median

"""What a self-generated dialogue must pass before it is learned, in order, with a report.

quality (length, script share, repetition) -> clean ending -> the output guard and the crisis
detector -> a perplexity band under the served model -> not already in data/. Each drop is counted
under its filter's name: the report a generated round logs.

The band cuts both ends: far above the served model's usual perplexity is gibberish, far below is a
loop or a copy the model would only reinforce.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from hamdam.data.chat_format import ChatFormat
from hamdam.data.datamodule import DialogueCollator
from hamdam.data.dedupe import NearDuplicateIndex, canonical
from hamdam.data.quality import QualityFilter
from hamdam.data.records import Dialogue, Turn
from hamdam.evaluation.perplexity import token_nll


@dataclass(frozen=True)
class Sample:
    prompt: str
    reply: str
    ended: bool  # the reply stopped by itself, not at the token budget

    @property
    def dialogue(self) -> Dialogue:
        return Dialogue((Turn("user", self.prompt), Turn("assistant", self.reply)))


@torch.inference_mode()
def reply_perplexities(
    model: torch.nn.Module, chat_format: ChatFormat, samples: list[Sample], batch_size: int = 16
) -> list[float]:
    """Each reply's perplexity under ``model`` (the same token_nll as the gate's)."""
    collate = DialogueCollator(chat_format.pad_id)
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(samples), batch_size):
        examples = [chat_format.encode_dialogue(s.dialogue) for s in samples[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in collate(examples).items()}
        nll, count = token_nll(model, batch)
        out += [math.exp(min(n / max(c, 1), 50.0)) for n, c in zip(nll.tolist(), count.tolist(), strict=True)]
    return out


class SampleFilter:
    def __init__(
        self,
        quality: QualityFilter,
        safety=None,
        band: tuple[float, float] | None = None,
        known: Iterable[str] = (),
        near_duplicate: float = 0.8,
    ):
        self.quality = quality
        self.safety = safety
        self.band = band
        texts = list(known)  # the replies already in data/
        self.exact = {canonical(t) for t in texts}
        self.near = NearDuplicateIndex(threshold=near_duplicate)
        for key, text in enumerate(texts):
            self.near.add(key, text)
        self.report: Counter = Counter()

    def __call__(self, samples: list[Sample], model=None, chat_format: ChatFormat | None = None) -> list[Sample]:
        survivors = [s for s in samples if self._plain(s) is None]
        if self.band is not None and survivors:
            low, high = self.band
            scores = reply_perplexities(model, chat_format, survivors)
            kept = []
            for sample, ppl in zip(survivors, scores, strict=True):
                if low <= ppl <= high:
                    kept.append(sample)
                else:
                    self.report["perplexity_band"] += 1
            survivors = kept
        final = []
        for sample in survivors:
            key = canonical(sample.reply)
            if key in self.exact or self.near.find(sample.reply):
                self.report["duplicate"] += 1
                continue
            self.exact.add(key)
            self.near.add(len(self.near.sets), sample.reply)
            final.append(sample)
        self.report["kept"] += len(final)
        return final

    def _plain(self, sample: Sample) -> str | None:
        reason = self.quality.reject(sample.dialogue)
        if reason is None and not sample.ended:
            reason = "no_clean_end"
        if reason is None and self.safety is not None:
            if self.safety.unsafe_reply(sample.reply) is not None:
                reason = "output_guard"
            elif self.safety.classify(sample.prompt).level != "none":
                reason = "crisis"
        if reason is not None:
            self.report[reason] += 1
        return reason

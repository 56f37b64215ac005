"""Held-out perplexity, the one implementation: ``hamdam evaluate``, the training module's validation
and the learning gate all call ``token_nll``.

Perplexity is per target token (the replies and their end marker, as trained), summed over the
set before the exp. The interval is a percentile bootstrap over dialogues, because dialogues, not
tokens, are what was sampled: a gate reading a 128-dialogue subset should know how wide its
figure is.

Why not torchmetrics' ``Perplexity`` (or Lightning's validation loop alone): it takes the logits of
every position, so gpt2-fa's 42,001-way head would run on the prompts too, and it keeps only the
set's total, where the bootstrap interval needs each dialogue's sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from hamdam.data.chat_format import IGNORE_INDEX, ChatFormat
from hamdam.data.datamodule import DialogueCollator
from hamdam.data.records import Dialogue


def body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A causal LM's transformer (hidden states) and its output projection, LoRA layers included."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.base_model, base.get_output_embeddings()


def token_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``batch``: the summed negative log-likelihood of its target tokens, and their count.

    The output projection runs only where a target follows: on gpt2-fa its 42,001-way head is about
    a quarter of the work per token, and prompts (user text, markers) are nearly half the tokens,
    which the model's own forward would project and then ignore. Also the training loss
    (``DialogueLM``): a packed batch (``position_ids``, no mask) stays packed.
    """
    body, head = body_and_head(model)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    hidden = body(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(head(hidden[:, :-1][keep]).float(), targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(targets.size(0), dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)
    return sums, keep.sum(dim=1)


@dataclass(frozen=True)
class Perplexity:
    loss: float  # mean NLL per target token
    perplexity: float
    low: float  # 95% bootstrap interval of the perplexity
    high: float
    target_tokens: int
    dialogues: int


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def bootstrap_interval(
    nll: np.ndarray, tokens: np.ndarray, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of the perplexity over dialogues drawn with replacement."""
    if len(nll) < 2:
        value = _ppl(float(nll.sum() / max(tokens.sum(), 1)))
        return value, value
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(nll), size=(resamples, len(nll)))
    losses = nll[draws].sum(axis=1) / np.maximum(tokens[draws].sum(axis=1), 1)
    low, high = np.percentile(losses, [2.5, 97.5])
    return _ppl(float(low)), _ppl(float(high))


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module, chat_format: ChatFormat, dialogues: list[Dialogue], batch_size: int
) -> Perplexity:
    """Batches are formed by length (little padding), in inference mode; the result does not depend
    on the order or the batch size."""
    collate = DialogueCollator(chat_format.pad_id)
    examples = [chat_format.encode_dialogue(d) for d in dialogues]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    nll = np.zeros(len(examples), dtype=np.float64)
    tokens = np.zeros(len(examples), dtype=np.int64)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in rows]).items()}
        sums, counts = token_nll(model, batch)
        nll[rows] = sums.double().cpu().numpy()
        tokens[rows] = counts.cpu().numpy()
    loss = float(nll.sum() / max(int(tokens.sum()), 1))
    low, high = bootstrap_interval(nll, tokens)
    return Perplexity(loss, _ppl(loss), low, high, int(tokens.sum()), len(examples))

"""Optimizer and schedule factories named by ``model.optimizer`` / ``model.scheduler``."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from transformers import get_scheduler

log = logging.getLogger(__name__)


def adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float = 2e-4,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    paged_8bit: str | bool = "auto",
) -> torch.optim.Optimizer:
    """AdamW; bitsandbytes' paged 8-bit AdamW (the seed's ``paged_adamw_8bit``) when on CUDA.

    ``paged_8bit=auto`` picks it when CUDA is available: its optimizer state is 4x smaller and
    pages to host memory under pressure, which is what lets gpt2-fa train on a 6 GB GPU.
    """
    use_8bit = torch.cuda.is_available() if paged_8bit == "auto" else bool(paged_8bit)
    params = list(params)
    if use_8bit:
        import bitsandbytes as bnb

        log.info("Optimizer: paged 8-bit AdamW (bitsandbytes), lr=%g", lr)
        return bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    log.info("Optimizer: AdamW (torch), lr=%g", lr)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    name: str = "cosine",
    warmup_ratio: float = 0.05,
    warmup_steps: int | None = None,
):
    """Warmup then decay, stepped once per optimizer step (the seed stepped it per epoch)."""
    warmup = warmup_steps if warmup_steps is not None else int(round(warmup_ratio * total_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)

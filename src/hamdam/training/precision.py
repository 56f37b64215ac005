"""Mixed precision where the hardware gains from it (``trainer.precision`` of ``experiment=tinydialogue_zh``)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def mixed_precision() -> str:
    """bf16 autocast on GPUs that have bf16, fp16 autocast (with loss scaling) on older GPUs, fp32 on
    a CPU: there autocast buys nothing and bf16 runs ~60x slower on CPUs without it (docs/ARCHITECTURE.md)."""
    if torch.cuda.is_available():
        choice = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    else:
        choice = "32-true"
    log.info("trainer.precision: %s for this machine", choice)
    return choice

"""Callbacks that Lightning lacks."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class TokenThroughput(L.Callback):
    """Logs ``train/tokens_per_sec`` (non-pad tokens per second of training step) and
    ``train/step_seconds`` (the wall time of each step, for comparing runs and machines)."""

    def __init__(self) -> None:
        self._start = 0.0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        elapsed = time.perf_counter() - self._start
        tokens = int(batch["tokens"]) if "tokens" in batch else int(batch["attention_mask"].sum())
        if elapsed > 0:
            pl_module.log("train/tokens_per_sec", tokens / elapsed, on_step=True, on_epoch=False, batch_size=1)
            pl_module.log("train/step_seconds", elapsed, on_step=True, on_epoch=False, batch_size=1)

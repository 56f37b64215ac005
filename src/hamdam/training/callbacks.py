"""Callbacks that Lightning lacks: tokens/s, a last checkpoint whatever validation did, a progress
line for logs, and the held-out measurement every run ends with."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from hamdam.data.chat_format import ChatFormat
from hamdam.data.records import Dialogue
from hamdam.evaluation.perplexity import perplexity
from hamdam.io import write_atomic_text

log = logging.getLogger(__name__)


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


class LastCheckpoint(L.Callback):
    """``last.ckpt`` for ``ckpt_path=last``: the state at the end of every epoch, and every
    ``every_n_steps`` optimizer steps when set.

    Lightning's ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` only when it saves a
    top-k checkpoint (so a resume could go back many epochs) and writes in place (so a kill can
    leave a truncated file). This one writes a temporary file and renames it over the last one.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None):
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self._saved_step = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._saved_step:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        final = self.dirpath / "last.ckpt"
        temporary = self.dirpath / f".last.ckpt.{os.getpid()}.tmp"
        trainer.save_checkpoint(temporary)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            os.replace(temporary, final)
        self._saved_step = trainer.global_step


class ProgressLog(L.Callback):
    """A log line every ``every_n_steps`` optimizer steps (epoch, step of total, loss, tokens/s) when
    stderr is not a terminal: a log file or a pipe gets no progress bar, and silence for minutes is
    indistinguishable from a hang."""

    def __init__(self, every_n_steps: int = 50, always: bool = False):
        self.every_n_steps = every_n_steps
        self.always = always
        self._logged = -1

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._logged or not trainer.is_global_zero:
            return
        if not self.always and sys.stderr.isatty():
            return
        self._logged = step
        metrics = trainer.callback_metrics
        loss = metrics.get("train/loss_step", metrics.get("train/loss"))
        speed = metrics.get("train/tokens_per_sec")
        log.info(
            "epoch %d, step %d/%s: loss %s, %s tokens/s",
            trainer.current_epoch,
            step,
            trainer.estimated_stepping_batches,
            "-" if loss is None else f"{float(loss):.4f}",
            "-" if speed is None else f"{float(speed):.0f}",
        )


class HeldoutPerplexity(L.Callback):
    """``heldout/loss`` and ``heldout/ppl`` (with its 95% interval) of the trained model on the held-out
    set, logged when training ends, on rank zero. It runs before Lightning's teardown moves the model
    to the CPU (a 4-bit model there is ~37x slower), under the run's precision, like validation.
    Also written to ``heldout.json`` beside the model, which ``hamdam models`` reads."""

    def __init__(self, dialogues: list[Dialogue], chat_format: ChatFormat, batch_size: int, record: Path):
        self.dialogues, self.chat_format, self.batch_size, self.record = dialogues, chat_format, batch_size, record
        self.metrics: dict[str, float] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model: torch.nn.Module = pl_module.model
        was_training = model.training
        model.eval()
        try:
            with trainer.precision_plugin.forward_context():
                result = perplexity(model, self.chat_format, self.dialogues, self.batch_size)
        finally:
            model.train(was_training)
        self.metrics = {"heldout/loss": result.loss, "heldout/ppl": result.perplexity,
                        "heldout/ppl_low": result.low, "heldout/ppl_high": result.high}  # fmt: skip
        if trainer.logger is not None:
            trainer.logger.log_metrics(self.metrics, step=trainer.global_step)
        record = {"dialogues": result.dialogues, "target_tokens": result.target_tokens,
                  **{k.removeprefix("heldout/"): v for k, v in self.metrics.items()}}  # fmt: skip
        write_atomic_text(self.record, json.dumps(record, indent=2) + "\n")
        log.info("held-out perplexity %.2f (95%% interval %.2f-%.2f) on %d dialogues", result.perplexity,
                 result.low, result.high, result.dialogues)  # fmt: skip

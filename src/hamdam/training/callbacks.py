"""Callbacks that Lightning lacks: a last checkpoint whatever validation did, a progress line for
logs, the held-out measurement every run ends with; and Lightning's throughput monitor counting
tokens under hamdam's metric names."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import RunningStage

from hamdam.data.chat_format import ChatFormat
from hamdam.data.records import Dialogue
from hamdam.evaluation.perplexity import perplexity
from hamdam.io import write_atomic_text

log = logging.getLogger(__name__)


def batch_rows(batch: dict[str, torch.Tensor]) -> int:
    """The rows (samples) of a training batch: ``ThroughputMonitor``'s ``batch_size_fn``."""
    return int(batch["input_ids"].size(0))


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The non-pad tokens of a training batch (``ThroughputMonitor``'s ``length_fn``): a packed batch
    counts them (``tokens``), a padded one has its attention mask."""
    return int(batch["tokens"]) if "tokens" in batch else int(batch["attention_mask"].sum())


class TokenThroughput(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` over non-pad tokens, its training figures logged on rank 0 as
    ``train/tokens_per_sec`` (per device) and ``train/step_seconds`` (a batch's wall time, data
    loading included), over the last ``window_size - 1`` batches.

    Under hamdam's names rather than Lightning's (``train/device/items_per_sec``, to the loggers only)
    so that earlier and later runs compare under one name in MLflow, and the progress line (from
    ``callback_metrics``, with or without a logger) and ``bench/`` read them as before.
    """

    def __init__(self, window_size: int = 2) -> None:
        super().__init__(batch_size_fn=batch_rows, length_fn=batch_tokens, window_size=window_size)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # FLOPs are only counted for a module that has flops_per_batch; no warning asking for it.
        self._module_has_flops = hasattr(pl_module, "flops_per_batch")

    def _compute(self, trainer: L.Trainer, iter_num: int | None = None) -> None:
        # Through LightningModule.log, as before: into callback_metrics (the progress line reads
        # them, logger or not), and to the loggers every log_every_n_steps.
        if trainer.state.stage != RunningStage.TRAINING:
            return
        figures = self._throughputs[RunningStage.TRAINING].compute()
        if "device/items_per_sec" not in figures:  # the window is not full yet
            return
        module = trainer.lightning_module
        module.log("train/tokens_per_sec", figures["device/items_per_sec"], on_step=True, on_epoch=False, batch_size=1)
        module.log("train/step_seconds", 1.0 / figures["device/batches_per_sec"], on_step=True, on_epoch=False,
                   batch_size=1)  # fmt: skip


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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Rank 0's folder: under torchrun each rank composed its own config, and its run directory
        # (named by the second it started) may differ. ModelCheckpoint does the same with its dirpath.
        self.dirpath = Path(trainer.strategy.broadcast(str(self.dirpath)))

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
    Also written to ``heldout.json`` beside the model, which ``hamdam models`` reads.

    Under FSDP rank 0 holds only shards, which it cannot run alone: ``hamdam train`` calls ``measure``
    on the gathered, unwrapped model instead."""

    def __init__(self, dialogues: list[Dialogue], chat_format: ChatFormat, batch_size: int, record: Path):
        self.dialogues, self.chat_format, self.batch_size, self.record = dialogues, chat_format, batch_size, record
        self.metrics: dict[str, float] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not isinstance(trainer.strategy, FSDPStrategy):
            self.measure(trainer, pl_module.model)

    def measure(self, trainer: L.Trainer, model: torch.nn.Module) -> None:
        """Measure ``model`` (on rank 0), log the figures and write ``heldout.json``."""
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

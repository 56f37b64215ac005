"""The LightningModule: any Hugging Face causal LM (full, LoRA, NF4 + LoRA) trained on replies only."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from hamdam.evaluation.perplexity import token_nll

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], Any]


class DialogueLM(L.LightningModule):
    """Loss on the labels that mask prompt and padding (see ChatFormat), per target token
    (``token_nll``: the output projection only where a target follows).

    Validation loss is averaged over target tokens across all batches (and processes), so
    ``val/ppl = exp(val/loss)`` is the true per-token perplexity of the split.
    """

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_nll = MeanMetric()
        # Checkpoints hold trainable weights only (see on_save_checkpoint), so loading is partial.
        self.strict_loading = False

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll, tokens = token_nll(self.model, batch)
        loss = nll.sum() / tokens.sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch["input_ids"].size(0))
        self.log(
            "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=1
        )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, tokens = token_nll(self.model, batch)
        count = tokens.sum()
        if count > 0:
            self.val_nll.update(nll.sum() / count, weight=count)

    def on_validation_epoch_end(self) -> None:
        nll = self.val_nll.compute()
        self.val_nll.reset()
        self.log("val/loss", nll, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(nll.clamp(max=50)), prog_bar=False, sync_dist=False)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 1
        scheduler = self.scheduler_factory(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_names(self) -> set[str]:
        return {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Frozen base weights (gpt2-fa, 4-bit or not) are reloaded from the base model; storing
        # them would make each LoRA checkpoint hundreds of MB.
        keep = self.trainable_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

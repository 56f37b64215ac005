"""Benchmark of the CUDA training path: NF4 + LoRA, bf16 mixed precision, paged 8-bit AdamW.

Trains a gpt2-fa-shaped model (12 layers x 12 heads x 768, vocabulary 42001, random weights built
locally, loaded through the same `pretrained_causal_lm` path as HooshvareLab/gpt2-fa) for a fixed
number of steps with each setting, through `hamdam.training.run.train` and the composed Hydra
config, and prints per setting: what was really built (4-bit layers, optimizer class, precision),
median step time, tokens per second, peak GPU memory, the loss at the start and the end, and the
time of one 48-token reply from the exported model as `hamdam chat` loads it.

    python bench/cuda_qlora.py --steps 60
    python bench/cuda_qlora.py --steps 60 --batch-size 64 --settings qlora fp32

Needs a CUDA GPU; on a CPU it stops with a message (see docs/ARCHITECTURE.md for NF4 on a CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hamdam.chat.session import load_for_chat  # noqa: E402
from hamdam.training.run import train  # noqa: E402

GPT2_FA_SHAPE = [
    "model.bootstrap.n_layer=12", "model.bootstrap.n_head=12", "model.bootstrap.n_embd=768",
    "model.bootstrap.vocab_size=42001", "model.bootstrap.n_positions=1024",
    "model.lora.r=16", "model.lora.lora_alpha=32", "model.optimizer.lr=2e-4", "model.max_length=256",
]  # fmt: skip

SETTINGS = {
    # The default on CUDA: quantization=auto -> NF4, trainer=gpu -> bf16-mixed, paged_8bit=auto.
    "qlora": ["trainer=gpu"],
    "lora-bf16": ["trainer=gpu", "model.quantization=none"],
    "fp32": ["trainer.accelerator=gpu", "model.quantization=none", "model.optimizer.paged_8bit=false"],
}


class StepRecorder(L.Callback):
    """Per-step wall time (synchronized), non-pad tokens and loss; what the run really built."""

    last: StepRecorder | None = None

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.tokens: list[int] = []
        self.losses: list[float] = []
        self.built: dict[str, Any] = {}
        self._start = 0.0
        StepRecorder.last = self

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.cuda.reset_peak_memory_stats()
        import bitsandbytes as bnb

        self.built = {
            "4-bit layers": sum(isinstance(m, bnb.nn.Linear4bit) for m in pl_module.modules()),
            "optimizer": type(trainer.optimizers[0]).__name__,
            "precision": trainer.precision,
            "trainable params": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
        }

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self._start)
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.built["peak GPU memory"] = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def run_setting(name: str, steps: int, batch_size: int, work: Path) -> None:
    overrides = [
        "experiment=smoke",
        *GPT2_FA_SHAPE,
        *SETTINGS[name],
        "~logger",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_checkpoint=null",
        "+callbacks.recorder._target_=__main__.StepRecorder",
        f"trainer.max_steps={steps}",
        f"data.batch_size={batch_size}",
        "trainer.max_epochs=100",
        "trainer.limit_val_batches=0",
        f"paths.root_dir={REPO}",
        f"paths.runs_dir={work}/runs",
        f"paths.cache_dir={work}/cache",
        f"paths.output_dir={work}/runs/{name}",
        f"run_name={name}",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    start = time.perf_counter()
    metrics = train(cfg)
    total = time.perf_counter() - start
    rec = StepRecorder.last
    assert rec is not None
    warm = rec.seconds[5:] or rec.seconds
    tokens = rec.tokens[5:] or rec.tokens
    print(f"\n== {name} ({' '.join(SETTINGS[name])})")
    for key, value in rec.built.items():
        print(f"  {key}: {value}")
    print(f"  steps: {len(rec.seconds)}, median step {statistics.median(warm) * 1000:.1f} ms (after 5 warm-up steps)")
    print(f"  tokens/s: {sum(tokens) / sum(warm):,.0f}")
    first, last = statistics.mean(rec.losses[:5]), statistics.mean(rec.losses[-5:])
    print(f"  loss: mean of the first 5 steps {first:.3f}, of the last 5 steps {last:.3f}")
    if "heldout/ppl" in metrics:  # measured on the GPU at the end of training (HeldoutPerplexity)
        print(f"  held-out perplexity {metrics['heldout/ppl']:.1f} "
              f"({metrics['heldout/ppl_low']:.1f}-{metrics['heldout/ppl_high']:.1f})")  # fmt: skip
    print(f"  train() in all (build, fit, held-out, export): {total:.1f} s")

    exported = load_for_chat(Path(cfg.export_dir), quantization="auto")
    fmt, model = exported.chat_format, exported.model
    ids = fmt.tokenizer("سلام مامان، دلم برات تنگ شده", return_tensors="pt").input_ids.to(model.device)
    model.generate(ids, max_new_tokens=4, do_sample=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=48, min_new_tokens=48, do_sample=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(f"  reply of {out.shape[1] - ids.shape[1]} tokens from the exported model: {elapsed * 1000:.0f} ms")
    del exported, model
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_qlora.py needs a CUDA GPU: this machine has none.")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, batch size {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.settings:
            run_setting(name, args.steps, args.batch_size, Path(tmp))


if __name__ == "__main__":
    main()

"""Training throughput over whole epochs: hamdam (Lightning), hamdam with packing, and Hugging Face's
Trainer, run alternately on the same records.

All three train the same gpt2-fa-shaped model (12 x 12 x 768, vocab 42001, random weights; built
locally, loaded through the gpt2-fa code path) with the same fresh LoRA (r16 on c_attn, c_proj,
c_fc), batch 8, fp32, AdamW at 2e-4 with a cosine schedule, on the same examples encoded once by
hamdam's ChatFormat (prompt masked, replies only):

- ``hamdam``: DialogueLM in a Lightning Trainer, length-grouped batches padded per batch;
- ``hamdam_packedN``: the same with ``data.packing=true data.pack_length=N`` (rows of whole
  examples of up to N tokens, 8 rows a batch, so fewer and larger steps);
- ``trainer``: transformers' Trainer with DataCollatorForSeq2Seq and length-grouped sampling.

Only the epoch is timed (not model loading). Each variant runs ``--repeats`` times, alternating, so
drift of the machine hits all of them alike; the report gives each run and the median ratios.

    .venv/bin/python bench/train_throughput.py --records 400 --repeats 2
    .venv/bin/python bench/train_throughput.py --shape small     # a 2-layer stand-in, for a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "gpt2-fa": {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 42001, "n_positions": 1024},
    "small": {"n_layer": 2, "n_head": 2, "n_embd": 128, "vocab_size": 4000, "n_positions": 1024},
}
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["c_attn", "c_proj", "c_fc"],
        "fan_in_fan_out": True, "bias": "none", "task_type": "CAUSAL_LM"}  # fmt: skip
MARKERS = {"user": "<|startoftext|>", "assistant": "<sep>", "end": "<|endoftext|>", "pad": "<pad>"}


def load_model(path: Path, seed: int):
    import torch
    from peft import LoraConfig

    from hamdam.data.chat_format import RoleMarkers
    from hamdam.models.backbones import apply_lora, pretrained_causal_lm
    from hamdam.models.tokenizers import load_pretrained_tokenizer

    tokenizer = load_pretrained_tokenizer([], RoleMarkers(**MARKERS), str(path))
    torch.manual_seed(seed)  # the same LoRA initialisation for every variant
    model = apply_lora(pretrained_causal_lm(tokenizer, str(path), quantization="none"), LoraConfig(**LORA))
    model.train()
    return model


def run_hamdam(path: Path, data: Path, chat_format, pack_length: int | None, batch: int, seed: int) -> dict:
    import lightning as L

    from hamdam.data.datamodule import DialogueDataModule
    from hamdam.models.module import DialogueLM
    from hamdam.training.optim import adamw, warmup_schedule

    model = load_model(path, seed)
    datamodule = DialogueDataModule(str(data), val_fraction=0.0, batch_size=batch, packing=pack_length is not None,
                                    pack_length=pack_length, seed=seed)  # fmt: skip
    datamodule.attach(chat_format)
    loader = datamodule.train_dataloader()
    module = DialogueLM(
        model,
        optimizer=lambda params: adamw(params, lr=2e-4, weight_decay=0.0, paged_8bit=False),
        scheduler=lambda opt, total: warmup_schedule(opt, total, "cosine", 0.03),
    )
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    slots = sum(int(b["input_ids"].numel()) for b in loader)
    return {
        "seconds": seconds,
        "steps": len(loader),
        "slots": slots,
        "loss": float(trainer.callback_metrics["train/loss_epoch"]),
    }


def run_trainer(path: Path, examples, pad_id: int, batch: int, seed: int, out: Path) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from hamdam.data.chat_format import RoleMarkers
    from hamdam.models.tokenizers import load_pretrained_tokenizer

    model = load_model(path, seed)
    tokenizer = load_pretrained_tokenizer([], RoleMarkers(**MARKERS), str(path))
    tokenizer.pad_token_id = pad_id
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels} for e in examples]
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=2e-4,
        lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0, train_sampling_strategy="group_by_length",
        report_to=[],
        save_strategy="no", logging_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=seed,
        disable_tqdm=True, max_grad_norm=1.0,
    )  # fmt: skip
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collator)
    loader = trainer.get_train_dataloader()
    slots = sum(int(b["input_ids"].numel()) for b in loader)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": len(loader), "slots": slots, "loss": float(result.training_loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-fa")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "seed" / "grief_fa.jsonl")
    parser.add_argument("--records", type=int, default=400, help="the epoch: the first N records of --data")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pack-lengths", default="128,512", help="row lengths of the packed variants")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    out = sys.stdout
    if args.json:  # the JSON object alone on stdout: what training and libraries print goes to stderr
        out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    if not args.data.is_file():
        sys.exit(f"No records at {args.data}: run `hamdam data build` first (or pass --data).")

    from hamdam.data.chat_format import ChatFormat, RoleMarkers
    from hamdam.data.records import load_dialogues
    from hamdam.models.tiny import ensure_tiny_gpt2
    from hamdam.models.tokenizers import load_pretrained_tokenizer

    work = Path(tempfile.mkdtemp(prefix="hamdam-throughput-"))
    dialogues = load_dialogues(args.data)[: args.records]
    subset = work / "records.jsonl"
    subset.write_text("".join(json.dumps(d.to_record(), ensure_ascii=False) + "\n" for d in dialogues))
    path = ensure_tiny_gpt2((t for d in dialogues for t in d.texts()), str(work / "model"), **SHAPES[args.shape])
    markers = RoleMarkers(**MARKERS)
    chat_format = ChatFormat(load_pretrained_tokenizer([], markers, str(path)), markers, max_length=512)
    examples = list(chat_format.encode_dialogues(dialogues))
    tokens = sum(len(e.input_ids) for e in examples)

    packs = {f"hamdam_packed{n}": int(n) for n in args.pack_lengths.split(",") if n}
    runs: dict[str, list[dict]] = {"hamdam": [], **{name: [] for name in packs}, "trainer": []}
    for repeat in range(args.repeats):
        for name in runs:
            if name == "trainer":
                result = run_trainer(path, examples, chat_format.pad_id, args.batch, 0, work / f"hf{repeat}")
            else:
                result = run_hamdam(path, subset, chat_format, packs.get(name), args.batch, 0)
            result["tokens_per_s"] = tokens / result["seconds"]
            runs[name].append(result)
            if not args.json:
                print(f"{name:<14} run {repeat + 1}: {result['seconds']:7.1f} s, {result['steps']:4d} steps, "
                      f"{result['tokens_per_s']:6.0f} tokens/s, padding {1 - tokens / result['slots']:5.1%}, "
                      f"loss {result['loss']:.3f}", flush=True)  # fmt: skip
    median = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    figures = {
        "shape": args.shape, "records": len(examples), "tokens": tokens, "batch": args.batch,
        "median_epoch_s": {k: round(v, 2) for k, v in median.items()},
        "over_trainer": {k: round(median["trainer"] / v, 3) for k, v in median.items() if k != "trainer"},
        "steps": {k: rs[0]["steps"] for k, rs in runs.items()},
        "padding": {k: round(1 - tokens / rs[0]["slots"], 4) for k, rs in runs.items()},
        "machine": f"{os.cpu_count()} cores",
    }  # fmt: skip
    if args.json:
        print(json.dumps(figures), file=out, flush=True)
    else:
        print(f"{len(examples)} records, {tokens} tokens an epoch; speed ratios (higher is faster):")
        for name, ratio in figures["over_trainer"].items():
            print(f"  {name} / Trainer: {ratio:.3f}x ({figures['steps'][name]} steps an epoch)")


if __name__ == "__main__":
    main()

"""Benchmark of a xiaohuangji-scale .conv corpus through hamdam's training data path.

Writes a synthetic .conv file of --dialogues dialogues (default 500,000, the xiaohuangji corpus's
size; mostly single exchanges, a fifth multi-turn, Chinese characters drawn with a Zipf-like
frequency), then times exactly what `hamdam train experiment=tinydialogue_zh` does with it:

1. parse and split: `DialogueDataModule` (ConvReader, normalization, train/validation split);
2. the character tokenizer trained on the training split (10,000 characters + role specials);
3. tokenize: `attach(ChatFormat)`, every dialogue encoded with labels, context 256;

and prints each time and the process's peak memory (RSS). Goal (issue 6): at most 60 s and 2 GB
on 2 CPU cores.

    .venv/bin/python bench/conv_parse.py
    .venv/bin/python bench/conv_parse.py --dialogues 50000 --keep /tmp/small.conv
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hamdam.data.chat_format import ChatFormat, RoleMarkers  # noqa: E402
from hamdam.data.datamodule import DialogueDataModule  # noqa: E402
from hamdam.models.tokenizers import char_level_tokenizer  # noqa: E402

MARKERS = RoleMarkers(user="<|user|>", assistant="<|assistant|>", end="<|end|>", pad="<pad>")


def write_corpus(path: Path, dialogues: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    # 6,000 distinct CJK characters, the first few far more frequent than the rest.
    chars = [chr(0x4E00 + i * 3) for i in range(6000)]
    weights = [1.0 / (rank + 10) for rank in range(len(chars))]
    pool = rng.choices(chars, weights=weights, k=2_000_000)
    punctuation = "，。？！"
    pos = 0
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for _ in range(dialogues):
            out.write("E\n")
            utterances = 2 if rng.random() < 0.8 else rng.randint(3, 6)
            for _ in range(utterances):
                n = rng.randint(2, 24)
                if pos + n > len(pool):
                    pos = 0
                text = "".join(pool[pos : pos + n])
                pos += n
                out.write(f"M {text}{rng.choice(punctuation)}\n")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=500_000)
    parser.add_argument("--keep", type=Path, help="write the corpus here and keep it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "synthetic.conv"
        start = time.perf_counter()
        write_corpus(path, args.dialogues)
        size = path.stat().st_size
        print(f"wrote {args.dialogues:,} dialogues, {size / 2**20:.0f} MiB, in {time.perf_counter() - start:.1f} s")
        print(f"peak RSS before reading: {peak_rss_gb():.2f} GB")

        t0 = time.perf_counter()
        data = DialogueDataModule(path=str(path), val_fraction=0.01, batch_size=16)
        t1 = time.perf_counter()
        tokenizer = char_level_tokenizer(data.train_texts(), MARKERS, vocab_size=10_000)
        t2 = time.perf_counter()
        data.attach(ChatFormat(tokenizer, MARKERS, max_length=256))
        t3 = time.perf_counter()

        assert data.train_set is not None and data.val_set is not None
        examples = len(data.train_set) + len(data.val_set)
        tokens = sum(data.train_set.lengths) + sum(data.val_set.lengths)
        split = f"{len(data.train_dialogues):,} train, {len(data.val_dialogues):,} val"
        print(f"parse + split:   {t1 - t0:6.1f} s  ({split})")
        print(f"train tokenizer: {t2 - t1:6.1f} s  ({len(tokenizer):,} tokens in the vocabulary)")
        print(f"tokenize:        {t3 - t2:6.1f} s  ({examples:,} examples, {tokens:,} tokens)")
        total = t3 - t0
        peak = peak_rss_gb()
        print(f"total:           {total:6.1f} s  (goal <= 60 s)   peak RSS {peak:.2f} GB (goal <= 2 GB)")


if __name__ == "__main__":
    main()

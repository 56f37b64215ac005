"""A tiny random-weight stand-in for HooshvareLab/gpt2-fa, built locally.

The hub cannot be reached from CI, so ``experiment=smoke`` and the tests build this directory and
load it through the very code path that loads gpt2-fa (``pretrained_causal_lm`` with a local
``name_or_path``). It copies what matters of gpt2-fa's files: a GPT-2 architecture and the same
special tokens at the same ids (<s> 0, <pad> 1, </s> 2, <|endoftext|>, <|startoftext|>, <sep>), with
no pad token set on the tokenizer.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

GPT2_FA_SPECIALS = ["<s>", "<pad>", "</s>", "<|endoftext|>", "<|startoftext|>", "<sep>"]


def ensure_tiny_gpt2(
    texts: Iterable[str],
    path: str,
    vocab_size: int = 2000,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    n_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Build the stand-in at ``path`` unless it is there already; written atomically."""
    target = Path(path)
    if (target / "config.json").is_file():
        return target
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=GPT2_FA_SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=GPT2_FA_SPECIALS[3:],
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Built a tiny GPT-2 stand-in for gpt2-fa at %s (%d tokens)", target, len(tokenizer))
    return target

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
from transformers import PreTrainedTokenizerFast

from hamdam.models.backbones import scratch_gpt2
from hamdam.models.tokenizers import byte_level_bpe

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
    core = byte_level_bpe(texts, GPT2_FA_SPECIALS, vocab_size, min_frequency=2)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=GPT2_FA_SPECIALS[3:],
    )
    torch.manual_seed(seed)
    model = scratch_gpt2(tokenizer, n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; a model directory is shared like any other
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if (target / "config.json").is_file():  # a sweep's other job built it meanwhile: the same model
            return target
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Built a tiny GPT-2 stand-in for gpt2-fa at %s (%d tokens)", target, len(tokenizer))
    return target

"""Backbones: a pretrained causal LM (optionally NF4 4-bit) or a GPT-2 built from scratch, plus LoRA.

Each builder takes the tokenizer first so that ``model.backbone`` in the config can name either.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from hamdam.errors import ModelLoadError
from hamdam.models.tokenizers import check_local_path, unreachable_message

log = logging.getLogger(__name__)

Quantization = Literal["auto", "nf4", "none"]


def resolve_quantization(quantization: str) -> str:
    """``auto`` means NF4 on CUDA and full precision elsewhere, because NF4 is slow on a CPU."""
    if quantization not in ("auto", "nf4", "none"):
        raise ModelLoadError(
            f"model.quantization={quantization!r} is not one of auto, nf4, none. Use auto (NF4 on "
            "CUDA, fp32 on a CPU), nf4 (force 4-bit anywhere) or none."
        )
    if quantization != "auto":
        return quantization
    if torch.cuda.is_available():
        log.info("quantization=auto: CUDA is available, loading the base model in NF4 4-bit")
        return "nf4"
    log.info(
        "quantization=auto: no CUDA device, loading the base model in fp32 (bitsandbytes NF4 on "
        "a CPU trains ~37x slower; pass model.quantization=nf4 to force it)"
    )
    return "none"


def resolve_dtype(compute_dtype: str) -> torch.dtype:
    if compute_dtype == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, compute_dtype)


def pretrained_causal_lm(
    tokenizer: PreTrainedTokenizerBase,
    name_or_path: str,
    quantization: Quantization = "auto",
    compute_dtype: str = "auto",
    double_quant: bool = True,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """Load a hub id or a local directory; the same code path for gpt2-fa and test models."""
    check_local_path(name_or_path)
    mode = resolve_quantization(quantization)
    kwargs: dict[str, Any] = {}
    if mode == "nf4":
        dtype = resolve_dtype(compute_dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        raise ModelLoadError(unreachable_message(name_or_path, "weights", err)) from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise ModelLoadError(
            f"The tokenizer has {len(tokenizer)} tokens but '{name_or_path}' has only "
            f"{model.get_input_embeddings().num_embeddings} embeddings; use the model's own tokenizer."
        )
    if mode == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def scratch_gpt2(
    tokenizer: PreTrainedTokenizerBase,
    n_layer: int = 4,
    n_head: int = 8,
    n_embd: int = 512,
    n_positions: int = 256,
    dropout: float = 0.1,
) -> PreTrainedModel:
    """transformers' GPT-2 with random weights: a causal model sized by config (TinyDialogue's shape)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    log.info("Built GPT-2 from scratch: %.1fM parameters", model.num_parameters() / 1e6)
    return model


def apply_lora(model: PreTrainedModel, lora: LoraConfig) -> PeftModel:
    peft_model = get_peft_model(model, lora)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA r=%d: %d trainable of %d parameters (%.2f%%)", lora.r, trainable, total, 100 * trainable / total)
    return peft_model

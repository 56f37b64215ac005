"""Tokenizers: trained from the corpus for from-scratch models, or loaded with a pretrained model.

Both builders take the same arguments so that ``model.tokenizer`` in the config can name either:
``(texts, markers) -> PreTrainedTokenizerFast`` with the role markers registered as special tokens
and the pad token set.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hamdam.data.chat_format import RoleMarkers
from hamdam.errors import ModelLoadError

log = logging.getLogger(__name__)


def byte_level_bpe(
    texts: Iterable[str], special_tokens: list[str], vocab_size: int, min_frequency: int = 2
) -> Tokenizer:
    """Byte-level BPE: no unknown tokens for Persian, Chinese or anything else users type."""
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    return core


def train_bpe_tokenizer(
    texts: Iterable[str],
    markers: RoleMarkers,
    vocab_size: int = 10_000,
    min_frequency: int = 2,
) -> PreTrainedTokenizerBase:
    """A tokenizer for a from-scratch model, trained on its training split, markers at ids 0-3."""
    extra = [markers.persona] if markers.persona else []
    specials = [markers.pad, markers.user, markers.assistant, markers.end, *extra]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(texts, specials, vocab_size, min_frequency),
        pad_token=markers.pad,
        eos_token=markers.end,
        additional_special_tokens=[markers.user, markers.assistant, *extra],
    )
    log.info("Trained a byte-level BPE tokenizer: %d tokens (asked for at most %d)", len(tokenizer), vocab_size)
    return tokenizer


def char_level_tokenizer(
    texts: Iterable[str],
    markers: RoleMarkers,
    vocab_size: int = 10_000,
    min_frequency: int = 1,
    unk: str = "<unk>",
) -> PreTrainedTokenizerBase:
    """One token per character, the ``vocab_size`` most frequent ones: the usual choice for Chinese,
    where a character is a morpheme. Markers at ids 0-3, ``unk`` at 4 for the rare characters left out."""
    extra = [markers.persona] if markers.persona else []
    specials = [markers.pad, markers.user, markers.assistant, markers.end, unk, *extra]
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    ranked = sorted((c for c, n in counts.items() if n >= min_frequency), key=lambda c: (-counts[c], c))
    chars = ranked[: max(0, vocab_size - len(specials))]
    vocab = {token: i for i, token in enumerate([*specials, *chars])}
    # BPE without merges splits text into characters; measured 1.7x faster than WordLevel behind a
    # one-character regex split, which matters on a 500,000-dialogue corpus (bench/conv_parse.py).
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    core.normalizer = normalizers.NFC()
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=markers.pad,
        eos_token=markers.end,
        unk_token=unk,
        additional_special_tokens=[markers.user, markers.assistant, *extra],
    )
    covered = sum(counts[c] for c in chars) / max(1, sum(counts.values()))
    log.info(
        "Character-level tokenizer: %d tokens (at most %d), covering %.2f%% of the characters seen",
        len(tokenizer),
        vocab_size,
        100 * covered,
    )
    return tokenizer


def load_pretrained_tokenizer(texts: Iterable[str], markers: RoleMarkers, name_or_path: str) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with markers reused from its vocabulary (no new embeddings)."""
    del texts  # a pretrained vocabulary is not retrained
    check_local_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(unreachable_message(name_or_path, "tokenizer", err)) from None
    vocab = tokenizer.get_vocab()
    missing = [t for t in markers.all() if t not in vocab]
    if missing:
        raise ModelLoadError(
            f"The tokenizer of '{name_or_path}' has no token(s) {missing} for the role markers. "
            "Set model.markers.* to tokens that exist in its vocabulary (gpt2-fa has <s>, <pad>, "
            "</s>, <|endoftext|>, <|startoftext|>, <sep>)."
        )
    known = set(tokenizer.all_special_tokens)
    new_specials = [t for t in markers.all() if t not in known]
    if new_specials:
        # The tokens exist already, so this marks them special without growing the vocabulary.
        tokenizer.add_special_tokens({"additional_special_tokens": new_specials}, replace_extra_special_tokens=False)
    tokenizer.pad_token = markers.pad
    return tokenizer


def looks_local(name_or_path: str) -> bool:
    return name_or_path.startswith(("/", "./", "../", "~")) or Path(name_or_path).exists()


def check_local_path(name_or_path: str) -> None:
    if looks_local(name_or_path) and not Path(name_or_path).expanduser().is_dir():
        raise ModelLoadError(
            f"Model directory '{name_or_path}' does not exist. Point model.name_or_path at a "
            "directory with config.json, the weights and the tokenizer files (as written by "
            "save_pretrained or downloaded from the Hugging Face hub)."
        )


def unreachable_message(name_or_path: str, what: str, err: Exception) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"Could not load the {what} of '{name_or_path}' ({first}). If the machine is offline or "
        "the hub cannot be reached, either (1) pass a local copy: model.name_or_path=/path/to/"
        "gpt2-fa (a directory with config.json, model.safetensors and the tokenizer files), or "
        f"(2) download it once on a connected machine (`hf download {name_or_path}`) and run "
        "with HF_HUB_OFFLINE=1 so the local cache is used."
    )

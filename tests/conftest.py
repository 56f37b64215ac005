"""Shared fixtures: composed configs, tiny tokenizers and models built locally (no network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from hamdam.chat.engine import ChatEngine
from hamdam.data.chat_format import ChatFormat, RoleMarkers
from hamdam.models.backbones import scratch_gpt2

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SAMPLE = REPO / "corpus" / "sample_fa.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A from-scratch model small enough for a CPU test (the real shape is 4x8x512).
TINY_SCRATCH = [
    "model.backbone.n_layer=1",
    "model.backbone.n_head=2",
    "model.backbone.n_embd=32",
    "model.max_length=96",
    "model.tokenizer.vocab_size=600",
    "trainer.max_epochs=1",
    "callbacks.rich_progress_bar=null",
]

MARKERS = RoleMarkers(user="<|user|>", assistant="<|assistant|>", end="<|end|>", pad="<pad>")
WORDS = ["سلام", "بابا", "پسرم", "دلم", "تنگ", "شده", "منم", "خوبی", "؟", "hello"]


@pytest.fixture
def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer with known ids: <pad>0 <|user|>1 <|assistant|>2 <|end|>3 [UNK]4, then WORDS."""
    vocab = {"<pad>": 0, "<|user|>": 1, "<|assistant|>": 2, "<|end|>": 3, "[UNK]": 4}
    vocab.update({w: 5 + i for i, w in enumerate(WORDS)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<|end|>",
        unk_token="[UNK]",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )


def ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(w) for w in text.split()]


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose conf/<name>.yaml as the CLI would, with the workspace in tmp_path."""

    def _compose(*overrides: str, name: str = "train") -> DictConfig:
        base = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name=name, overrides=[*base, *overrides])
        with open_dict(cfg):
            pass
        return cfg

    return _compose


DVC = str(Path(sys.executable).with_name("dvc"))
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]


def sh(args: list[str], cwd: Path) -> str:
    """A command's stdout; ``dvc`` is this environment's."""
    args = [DVC, *args[1:]] if args[0] == "dvc" else args
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A git + DVC workspace whose data/ holds one committed seed record."""
    sh([*GIT, "init", "-q"], tmp_path)
    sh(["dvc", "init", "-q"], tmp_path)
    (tmp_path / "data" / "seed").mkdir(parents=True)
    (tmp_path / "data" / "seed" / "a.jsonl").write_text('{"instruction": "سلام", "response": "سلام پسرم"}\n')
    sh(["dvc", "add", "-q", "data"], tmp_path)
    sh([*GIT, "add", "-A"], tmp_path)
    sh([*GIT, "commit", "-qm", "seed"], tmp_path)
    return tmp_path


def write_records(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def hamdam_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The installed ``hamdam`` command line and its environment (offline, unbuffered)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return [str(Path(sys.executable).with_name("hamdam")), *args], env


def run_hamdam(args: list[str], cwd: Path, stdin: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed ``hamdam`` command as a user would."""
    command, env = hamdam_command(args)
    return subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)


class FixedReplyModel(torch.nn.Module):
    """A real GPT-2 whose generate() returns a fixed reply, to drive the chat engine end to end."""

    def __init__(self, tokenizer, reply_ids):
        super().__init__()
        self.inner = scratch_gpt2(tokenizer, n_layer=1, n_head=1, n_embd=8, n_positions=64)
        self.reply_ids = reply_ids
        self.calls = 0

    def generate(self, input_ids, **kwargs):
        self.calls += 1
        return torch.cat([input_ids, torch.tensor([self.reply_ids])], dim=1)


def engine_with(tokenizer, guard, reply_text: str) -> tuple[ChatEngine, FixedReplyModel]:
    """A ChatEngine (word-level test markers) whose model always answers ``reply_text``."""
    fmt = ChatFormat(tokenizer, MARKERS, max_length=64)
    model = FixedReplyModel(tokenizer, fmt.encode_text(reply_text) + [fmt.end_id])
    return ChatEngine(model, fmt, GenerationConfig(max_new_tokens=8), guard), model

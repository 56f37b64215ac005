"""TinyDialogue parity: experiment=tinydialogue_zh trains on a .conv file, the chat answers in
Chinese, and every sampling argument the seed documents is honoured."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import GenerationConfig, set_seed

from hamdam.chat.engine import ChatEngine, Conversation
from hamdam.data.chat_format import ChatFormat, RoleMarkers
from hamdam.data.conv import ConvReader
from hamdam.models.backbones import scratch_gpt2
from hamdam.models.tokenizers import char_level_tokenizer

from conftest import REPO, run_hamdam

SAMPLE_ZH = REPO / "corpus" / "sample_zh.conv"
CJK = re.compile(r"[\u4e00-\u9fff]")
MARKERS = RoleMarkers(user="<|user|>", assistant="<|assistant|>", end="<|end|>", pad="<pad>")


@pytest.mark.slow
def test_tinydialogue_zh_trains_the_seed_shape_on_a_conv_file_and_chats_in_chinese(tmp_path):
    train = run_hamdam(
        ["train", "experiment=tinydialogue_zh", f"data.path={SAMPLE_ZH}", "trainer.max_epochs=2", "~logger"],
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").glob("tinydialogue_zh-*")
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["n_positions"]) == (4, 8, 512, 256)
    assert config["vocab_size"] <= 10_000
    resolved = (run_dir / "resolved_config.yaml").read_text()
    assert "accumulate_grad_batches: 4" in resolved and "gradient_clip_val: 1.0" in resolved
    assert "precision: 32-true for this machine" in (run_dir / "train.log").read_text()
    # A checkpoint every 2 epochs: after 2 epochs, the one of epoch index 1 (and last.ckpt to resume).
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch001-step2.ckpt", "last.ckpt"]

    assert run_hamdam(["use", "latest"], cwd=tmp_path).returncode == 0  # training alone never changes what is served
    chat = run_hamdam(
        ["chat", "lang=zh", "seed=1", "generation.max_new_tokens=20"], cwd=tmp_path, stdin="你好\n我想我妈妈了\n"
    )
    assert chat.returncode == 0, chat.stderr[-3000:]
    replies = chat.stdout.strip().splitlines()
    assert len(replies) == 2 and all(CJK.search(r) for r in replies), replies
    assert "人工智能" in chat.stderr  # the opening note, in Chinese


@pytest.fixture(scope="module")
def engine_parts():
    texts = [t.text for d in ConvReader().read(SAMPLE_ZH) for t in d.turns]
    tokenizer = char_level_tokenizer(texts, MARKERS, vocab_size=10_000)
    torch.manual_seed(0)
    model = scratch_gpt2(tokenizer, n_layer=1, n_head=2, n_embd=32, n_positions=128, dropout=0.0).eval()
    return model, ChatFormat(tokenizer, MARKERS, max_length=128)


def reply(parts, seed: int = 0, **generation) -> str:
    model, chat_format = parts
    settings = {"do_sample": True, "max_new_tokens": 16, "min_new_tokens": 16, **generation}
    engine = ChatEngine(model, chat_format, GenerationConfig(**settings))
    set_seed(seed)
    return engine.generate(Conversation(), "你好，今天天气怎么样")


def test_sampling_arguments_are_honoured(engine_parts):
    greedy = reply(engine_parts, do_sample=False)
    sampled = {reply(engine_parts, seed=s, temperature=1.0, top_p=1.0, top_k=0) for s in range(4)}
    assert len(sampled) > 1, "plain sampling should vary with the seed"
    # Each argument, pushed to its limit, collapses sampling onto the greedy reply.
    for limit in ({"top_k": 1}, {"top_p": 1e-9, "top_k": 0}, {"temperature": 1e-4, "top_k": 0, "top_p": 1.0}):
        assert {reply(engine_parts, seed=s, **limit) for s in range(4)} == {greedy}, limit
    # repetition_penalty changes what greedy decoding picks once a character repeats.
    penalized = reply(engine_parts, do_sample=False, repetition_penalty=5.0)
    assert penalized != greedy
    assert len(set(penalized)) > len(set(greedy))

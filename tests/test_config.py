"""Every option of every config group composes, resolves, and names importable objects."""

from pathlib import Path

import pytest
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf
from transformers import GenerationConfig

from hamdam.data.chat_format import RoleMarkers

from conftest import CONF

TRAIN_GROUPS = ["data", "model", "trainer", "callbacks", "logger", "experiment", "paths"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def targets(node, found=None):
    found = [] if found is None else found
    if OmegaConf.is_dict(node):
        if "_target_" in node:
            found.append(node["_target_"])
        for value in node.values():
            targets(value, found)
    elif OmegaConf.is_list(node):
        for value in node:
            targets(value, found)
    return found


@pytest.mark.parametrize("group, option", [(g, o) for g in TRAIN_GROUPS for o in options(g)])
def test_train_group_option_composes(compose_cfg, group, option):
    cfg = compose_cfg(f"{group}={option}")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["name"]
    for target in targets(cfg):
        assert callable(get_method(target)), target
    assert isinstance(instantiate(cfg.model.markers), RoleMarkers)


@pytest.mark.parametrize("option", options("generation"))
def test_generation_options_build_a_generation_config(compose_cfg, option):
    cfg = compose_cfg(f"generation={option}", name="chat")
    generation = instantiate(cfg.generation)
    assert isinstance(generation, GenerationConfig)
    assert generation.max_new_tokens == 300


def test_seed_generation_defaults(compose_cfg):
    g = instantiate(compose_cfg(name="chat").generation)
    assert (g.temperature, g.top_p, g.repetition_penalty, g.max_new_tokens) == (0.7, 0.9, 1.2, 300)
    assert g.do_sample and g.top_k == 0 and g.no_repeat_ngram_size == 0


def test_seed_lora_defaults_and_overrides(compose_cfg):
    cfg = compose_cfg("model=gpt2_fa_qlora", "model.lora.r=8", "trainer.max_epochs=3")
    lora = instantiate(cfg.model.lora)
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (8, 32, 0.05)
    assert set(lora.target_modules) == {"c_attn", "c_proj", "c_fc"}
    assert cfg.trainer.max_epochs == 3
    assert cfg.model.backbone.quantization == "auto"
    assert compose_cfg("model=gpt2_fa_qlora", "model.quantization=nf4").model.backbone.quantization == "nf4"


def test_tiny_dialogue_is_the_seed_shape(compose_cfg):
    b = compose_cfg().model.backbone
    assert (b.n_layer, b.n_head, b.n_embd, b.n_positions) == (4, 8, 512, 256)
    assert compose_cfg().model.tokenizer.vocab_size == 10000


def test_paths_follow_the_workspace(compose_cfg, tmp_path):
    cfg = compose_cfg()
    assert Path(cfg.data.path) == tmp_path / "corpus" / "sample_fa.json"
    assert cfg.logger.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"

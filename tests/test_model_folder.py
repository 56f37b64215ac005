"""A model folder is data, never code: hamdam.json can only name loaders hamdam defines."""

import json
from pathlib import Path

import pytest

from hamdam.errors import ModelLoadError
from hamdam.models.export import load_exported

from conftest import run_hamdam

MARKERS = {"user": "<|user|>", "assistant": "<|assistant|>", "end": "<|end|>", "pad": "<pad>"}


def folder(root: Path, meta: dict, weights: str = "adapter_model.safetensors") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "hamdam.json").write_text(json.dumps(meta), encoding="utf-8")
    (root / weights).write_bytes(b"")
    return root


def lora(backbone: dict) -> dict:
    return {"format": 1, "kind": "lora", "markers": MARKERS, "max_length": 64, "backbone": backbone}


def test_a_crafted_model_folder_cannot_write_a_file_through_the_chat(tmp_path):
    target = tmp_path / "pwned.txt"
    crafted = folder(tmp_path / "shared-adapter", lora({"_target_": "pathlib.Path.write_text",
                                                       "self": str(target), "data": "written"}))  # fmt: skip
    chat = run_hamdam(["chat", f"model_dir={crafted}"], tmp_path, stdin="سلام\n")
    assert chat.returncode == 2 and "Traceback" not in chat.stderr
    assert "its backbone names 'pathlib.Path.write_text', not one of the loaders hamdam defines" in chat.stderr
    assert not target.exists()


@pytest.mark.parametrize(
    ("meta", "weights", "problem"),
    [
        (lora({"_target_": "builtins.open", "file": "x", "mode": "w"}), "adapter_model.safetensors",
         "its backbone names 'builtins.open'"),
        (lora({"_target_": "hamdam.models.backbones.pretrained_causal_lm", "name_or_path": "m", "hook": "x"}),
         "adapter_model.safetensors", "arguments hamdam.models.backbones.pretrained_causal_lm does not take: hook"),
        (lora({"_target_": "hamdam.models.backbones.pretrained_causal_lm",
               "name_or_path": {"_target_": "os.getcwd"}}), "adapter_model.safetensors",
         "must be plain values, but name_or_path is not"),
        ({"format": 1, "kind": "full", "markers": MARKERS, "max_length": 64, "backbone": None}, "pytorch_model.bin",
         "no model.safetensors (weights are read from safetensors only"),
        ({"kind": "script", "markers": MARKERS}, "model.safetensors", "'kind' must be"),
        ({"format": 1, "kind": "full", "markers": {"user": 1}, "max_length": 64}, "model.safetensors", "'markers'"),
    ],
)  # fmt: skip
def test_model_metadata_outside_the_allow_list_is_refused_before_anything_is_built(tmp_path, meta, weights, problem):
    with pytest.raises(ModelLoadError, match="is not a model folder hamdam will load") as error:
        load_exported(folder(tmp_path / "m", meta, weights))
    assert problem in str(error.value)


def test_broken_metadata_json_is_a_clear_error(tmp_path):
    broken = tmp_path / "m"
    broken.mkdir()
    (broken / "hamdam.json").write_text('{"kind": "full",', encoding="utf-8")
    with pytest.raises(ModelLoadError, match="it is not valid JSON"):
        load_exported(broken)

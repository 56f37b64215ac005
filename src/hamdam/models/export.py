"""Writing a trained model for inference, and loading it back.

An export directory holds, written atomically (staged, then renamed into place):

- LoRA on a pretrained base: ``adapter_config.json`` + ``adapter_model.safetensors`` (PEFT format,
  loadable with ``PeftModel.from_pretrained``);
- a model trained from scratch: ``config.json`` + ``model.safetensors`` (``save_pretrained``);
- the tokenizer files, and ``hamdam.json``: the role markers, the context length and, for an
  adapter, the backbone config that rebuilds its base model.

A model folder is data, never code: it may come from someone else (a shared adapter, a pointer
file). So ``hamdam.json`` is read against an allow-list before anything is built: its backbone can
only name a loader hamdam defines (``BACKBONES``), with that loader's own arguments as plain values,
and weights are read from safetensors only (no pickle).
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from hamdam.data.chat_format import ChatFormat, RoleMarkers
from hamdam.errors import ModelLoadError
from hamdam.io import write_atomic_text
from hamdam.models.backbones import pretrained_causal_lm

log = logging.getLogger(__name__)

META_FILE = "hamdam.json"
LATEST_FILE = "latest.json"

# The base-model loaders a model folder may name (its backbone ``_target_``), and nothing else.
BACKBONES: dict[str, Callable[..., PreTrainedModel]] = {
    "hamdam.models.backbones.pretrained_causal_lm": pretrained_causal_lm,
}
_SCALARS = (str, int, float, bool, type(None))


@dataclass
class Exported:
    model: PreTrainedModel
    chat_format: ChatFormat
    meta: dict[str, Any]


def export_model(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    markers: RoleMarkers,
    max_length: int,
    out_dir: Path,
    backbone: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` for inference. ``backbone`` is the config of a pretrained base, None if from scratch."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        if isinstance(model, PeftModel) and backbone is not None:
            kind = "lora"
            model.save_pretrained(staging)
        else:
            kind = "full"
            if isinstance(model, PeftModel):  # LoRA on a from-scratch model: nothing to load it onto
                model = model.merge_and_unload()
            model.config.use_cache = True
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        meta = {
            "format": 1,
            "kind": kind,
            "markers": asdict(markers),
            "max_length": max_length,
            "backbone": backbone if kind == "lora" else None,
            **(extra or {}),
        }
        (staging / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.chmod(0o755)  # mkdtemp makes it private; a model directory is shared like any other
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Saved %s model to %s", kind, out_dir)
    return out_dir


def load_exported(model_dir: str | Path, quantization: str | None = None, trainable: bool = False) -> Exported:
    """Load an export for generation, or with ``trainable`` to train on (an adapter stays trainable).

    ``quantization`` overrides the base model's setting for adapters.
    """
    model_dir = Path(model_dir)
    meta_path = model_dir / META_FILE
    if not meta_path.is_file():
        raise ModelLoadError(
            f"'{model_dir}' is not a hamdam model directory (no {META_FILE}). Train one with "
            "`hamdam train`, or pass model_dir=... pointing at a run's model/ directory."
        )
    meta, loader, arguments = read_meta(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    markers = RoleMarkers(**meta["markers"])
    if loader is not None:
        arguments["gradient_checkpointing"] = False
        if quantization is not None:
            arguments["quantization"] = quantization
        base = loader(tokenizer=tokenizer, **arguments)
        model = PeftModel.from_pretrained(base, model_dir, is_trainable=trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    if trainable:
        model.train()
        model.config.use_cache = False
    else:
        model.eval()
        model.config.use_cache = True
    window = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    chat_format = ChatFormat(tokenizer, markers, max_length=window or meta["max_length"])
    return Exported(model=model, chat_format=chat_format, meta=meta)


def read_meta(model_dir: Path) -> tuple[dict[str, Any], Callable[..., PreTrainedModel] | None, dict[str, Any]]:
    """``hamdam.json`` checked against the allow-list: the metadata, and for an adapter the base
    model's loader and its arguments. Raises ModelLoadError, before anything is built."""
    meta_path = model_dir / META_FILE

    def refuse(problem: str) -> ModelLoadError:
        return ModelLoadError(
            f"'{meta_path}' is not a model folder hamdam will load: {problem}. A model folder is data, "
            "never code; use one written by `hamdam train`, or train one."
        )

    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refuse(f"it is not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("kind") not in ("lora", "full"):
        raise refuse('its \'kind\' must be "lora" or "full"')
    markers = meta.get("markers")
    if (
        not isinstance(markers, dict)
        or not {"user", "assistant", "end", "pad"} <= set(markers) <= {"user", "assistant", "end", "pad", "persona"}
        or not all(isinstance(v, str) for k, v in markers.items() if k != "persona")
        or not isinstance(markers.get("persona"), (str, type(None)))
    ):
        raise refuse("its 'markers' must map user, assistant, end and pad (and optionally persona) to token strings")
    if not isinstance(meta.get("max_length"), int) or meta["max_length"] < 1:
        raise refuse("its 'max_length' must be a positive whole number")
    weights = "adapter_model.safetensors" if meta["kind"] == "lora" else "model.safetensors"
    if not (model_dir / weights).is_file():
        raise refuse(f"it has no {weights} (weights are read from safetensors only, never from pickle files)")
    if meta["kind"] == "full":
        return meta, None, {}
    backbone = meta.get("backbone")
    if not isinstance(backbone, dict):
        raise refuse("an adapter needs a 'backbone' object naming its base model")
    arguments = dict(backbone)
    target = arguments.pop("_target_", None)
    loader = BACKBONES.get(target) if isinstance(target, str) else None
    if loader is None:
        raise refuse(f"its backbone names {target!r}, not one of the loaders hamdam defines ({', '.join(BACKBONES)})")
    allowed = set(inspect.signature(loader).parameters) - {"tokenizer"}
    unknown = sorted(set(arguments) - allowed)
    if unknown:
        raise refuse(f"its backbone has arguments {target} does not take: {', '.join(unknown)}")
    nested = sorted(k for k, v in arguments.items() if not isinstance(v, _SCALARS))
    if nested:
        raise refuse(f"its backbone arguments must be plain values, but {', '.join(nested)} is not")
    return meta, loader, arguments


def write_pointer(pointer: Path, model_dir: Path, info: dict[str, Any]) -> None:
    """Point a reader at ``model_dir``; replaced atomically so a reader never sees half a file."""
    payload = {"model_dir": str(Path(model_dir).resolve()), **info}
    write_atomic_text(Path(pointer), json.dumps(payload, ensure_ascii=False, indent=2) + "\n")


def write_latest(runs_dir: Path, model_dir: Path, info: dict[str, Any]) -> None:
    """Record the model the latest training wrote (``hamdam use latest`` serves it; training never does)."""
    write_pointer(Path(runs_dir) / LATEST_FILE, model_dir, info)


def read_latest(runs_dir: Path) -> Path:
    pointer = Path(runs_dir) / LATEST_FILE
    if not pointer.is_file():
        raise ModelLoadError(
            f"No model has been trained here yet: {pointer} does not exist. Run `hamdam train` (or "
            "`hamdam train experiment=smoke` for a one-minute model) first, or pass "
            "model_dir=/path/to/run/model."
        )
    return Path(json.loads(pointer.read_text(encoding="utf-8"))["model_dir"])

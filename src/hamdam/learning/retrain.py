"""A round's retrain: from the champion, on the round's records plus a replay of earlier data.

The training config is ``conf/train.yaml`` composed with ``experiment=<learning.experiment>``
(``conf/experiment/round.yaml``) and ``learning.train_overrides``, once per process (``template``);
each round merges only what is its own (paths, the model it starts from, its data file, epochs).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hamdam.data.sources import iter_sources
from hamdam.errors import HamdamError
from hamdam.io import write_atomic_text

log = logging.getLogger(__name__)


def workspace_paths(cfg: DictConfig) -> dict[str, str]:
    """The workspace's directories as absolute paths, for a config read by another process."""
    return {key: str(Path(cfg.paths[key]).resolve()) for key in ("root_dir", "runs_dir", "cache_dir")}


def template(cfg: DictConfig) -> DictConfig:
    """The train config every round of this workspace starts from; needs Hydra's config search path
    (``hamdam learn``, the chat, or ``initialize_config_dir``)."""
    from hydra import compose

    learning = cfg.learning
    train_cfg = compose(config_name="train", overrides=[f"experiment={learning.experiment}", *learning.train_overrides])
    paths = workspace_paths(cfg)
    paths["output_dir"] = str(Path(paths["runs_dir"]) / "rounds" / "next")
    return OmegaConf.merge(train_cfg, {"paths": paths})


def replay_sample(data_dir: Path, exclude: set[str], size: int, seed: int) -> list[dict[str, Any]]:
    """``size`` earlier records (seed corpus, imports, older rounds), drawn reproducibly."""
    pool = [r for r in iter_sources(data_dir) if r.source not in exclude]
    chosen = random.Random(seed).sample(pool, min(size, len(pool)))
    return [c.dialogue.to_record() for c in chosen]


def adapter_rank(model_dir: Path) -> int | None:
    config = Path(model_dir) / "adapter_config.json"
    return json.loads(config.read_text(encoding="utf-8")).get("r") if config.is_file() else None


class Retrainer:
    def __init__(
        self, template: DictConfig, epochs: int, replay_ratio: float, heldout: str | None = None, validate: bool = False
    ):
        self.template = template
        self.epochs = epochs
        self.replay_ratio = replay_ratio
        self.heldout = heldout
        self.validate = validate
        self.root = Path(template.paths.root_dir)
        self.rounds_dir = Path(template.paths.runs_dir) / "rounds"

    def work_dir(self, number: int) -> Path:
        return self.rounds_dir / f"{number:04d}"

    def data(self, number: int, sources: list[str]) -> tuple[Path, int, int]:
        """The round's training file: its records (all pending rounds') plus the replay sample."""
        records = [
            json.loads(line)
            for source in sorted(sources)
            for line in (self.root / "data" / source).read_text(encoding="utf-8").splitlines()
        ]
        replay = replay_sample(self.root / "data", set(sources), int(len(records) * self.replay_ratio), seed=number)
        path = self.work_dir(number) / "train.jsonl"
        write_atomic_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records + replay))
        return path, len(records), len(replay)

    def config(self, number: int, base: Path, data_path: Path, tags: dict[str, str]) -> DictConfig:
        self._check_adapter(base)
        work = self.work_dir(number)
        own = {
            "paths": {"output_dir": str(work)},
            "run_name": f"round-{number:04d}",
            "init_from": str(base),
            "export_dir": str(work / "model"),
            "data": {"path": str(data_path), "val_path": self.heldout if self.validate else None, "val_fraction": 0.0},
            "trainer": {"max_epochs": self.epochs, "limit_val_batches": None if self.validate else 0},
            "logger": {"tags": tags},
        }
        return OmegaConf.merge(self.template, own)

    def _check_adapter(self, base: Path) -> None:
        """A round continues the served adapter: a different rank cannot be, and is not silently ignored."""
        lora = self.template.model.get("lora")
        have = adapter_rank(base)
        if lora is not None and have is not None and lora.r != have:
            raise HamdamError(
                f"A round continues the served LoRA adapter ({base}, r={have}), but its training config "
                f"asks for model.lora.r={lora.r}. Drop the override from learning.train_overrides, or "
                f"train a new base with `hamdam train model.lora.r={lora.r}` and serve it."
            )

    def __call__(self, cfg: DictConfig) -> None:
        from hamdam.training.run import train

        train(cfg)

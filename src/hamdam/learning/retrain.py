"""A round's retrain: from the champion, on the round's records plus a replay of earlier data.

The training config is ``conf/train.yaml`` composed with ``experiment=<learning.experiment>``
(``conf/experiment/round.yaml``) and ``learning.train_overrides``, once per process (``template``);
each round merges only what is its own (paths, the model it starts from, its data file, epochs).
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
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


def replay_sample(
    data_dir: Path,
    exclude: set[str],
    size: int,
    seed: int,
    max_generated: int | None = None,
    retired: set[str] = frozenset(),
) -> list[dict[str, Any]]:
    """``size`` earlier records (seed corpus, imports, older rounds), drawn reproducibly, in the
    proportions of data/ but with at most ``max_generated`` model-generated ones: the rest is human
    (or chat), so human data is always replayed. Nothing of a ``retired`` persona card is drawn."""
    pool = [r for r in iter_sources(data_dir) if r.source not in exclude and r.card not in retired]
    generated = [r for r in pool if r.origin == "generated"]
    others = [r for r in pool if r.origin != "generated"]
    size = min(size, len(pool))
    rng = random.Random(seed)
    n_generated = round(size * len(generated) / len(pool)) if pool else 0
    if max_generated is not None:
        n_generated = min(n_generated, max(max_generated, 0))
    n_others = min(size - n_generated, len(others))
    chosen = rng.sample(others, n_others) + rng.sample(generated, min(n_generated, len(generated)))
    chosen.sort(key=lambda r: r.order)
    return [{**c.dialogue.to_record(), "origin": c.origin, **({"card": c.card} if c.card else {})} for c in chosen]


@dataclass(frozen=True)
class RoundData:
    """A round's training file: the rounds' own records, the replay, and the model-generated share."""

    path: Path
    records: int
    replay: int
    generated_share: float


def adapter_rank(model_dir: Path) -> int | None:
    config = Path(model_dir) / "adapter_config.json"
    return json.loads(config.read_text(encoding="utf-8")).get("r") if config.is_file() else None


class Retrainer:
    def __init__(
        self,
        template: DictConfig,
        epochs: int,
        replay_ratio: float,
        heldout: str | None = None,
        validate: bool = False,
        max_generated_share: float = 0.5,
    ):
        self.template = template
        self.max_generated_share = max_generated_share
        self.epochs = epochs
        self.replay_ratio = replay_ratio
        self.heldout = heldout
        self.validate = validate
        self.root = Path(template.paths.root_dir)
        self.rounds_dir = Path(template.paths.runs_dir) / "rounds"

    def work_dir(self, number: int) -> Path:
        return self.rounds_dir / f"{number:04d}"

    def data(
        self, number: int, sources: list[str], never_replay: set[str] | None = None, retired: set[str] = frozenset()
    ) -> RoundData:
        """The round's training file: its records (all pending rounds') plus the replay sample.

        Accumulate, never replace: the replay is ``replay_ratio`` x the new records, enlarged if
        needed so that model-generated records (new and replayed) stay within
        ``max_generated_share`` of the whole; the rest of the replay is human-written. Sources in
        ``never_replay`` (generated rounds the gate rejected) are not drawn, and nothing said to or
        by a ``retired`` persona card is learned.
        """
        records = [
            record
            for source in sorted(sources)
            for line in (self.root / "data" / source).read_text(encoding="utf-8").splitlines()
            if (record := json.loads(line)).get("card") not in retired
        ]
        share = self.max_generated_share
        new_generated = sum(r.get("origin") == "generated" for r in records)
        size = int(len(records) * self.replay_ratio)
        if new_generated and share > 0:
            size = max(size, math.ceil(new_generated / share) - len(records))
        allowed = math.floor(share * (len(records) + size)) - new_generated
        exclude = set(sources) | set(never_replay or ())
        replay = replay_sample(self.root / "data", exclude, size, seed=number, max_generated=allowed, retired=retired)
        rows = records + replay
        generated_share = sum(r.get("origin") == "generated" for r in rows) / max(len(rows), 1)
        if generated_share > share + 1e-9:
            log.warning(
                "round %d: generated records are %.0f%% of its training (max_generated_share %.0f%%): "
                "data/ holds too little human data to replay", number, 100 * generated_share, 100 * share,
            )  # fmt: skip
        path = self.work_dir(number) / "train.jsonl"
        # People's chats: private, like the chat store.
        write_atomic_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), mode=0o600)
        return RoundData(path, len(records), len(replay), generated_share)

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
        if self.heldout:  # the gate's file: the round's heldout/* figures compare with every other run's
            own["heldout"] = {"path": self.heldout}
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

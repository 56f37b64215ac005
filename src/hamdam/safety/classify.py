"""``hamdam safety classify``: one message per stdin line -> one JSON object per stdout line.

Each line is judged on its own (no conversation context), by the same layered detector as the chat.
"""

from __future__ import annotations

import json
import sys

from hydra.utils import instantiate
from omegaconf import DictConfig

from hamdam.safety.guard import SafetyGuard


def classify(cfg: DictConfig) -> None:
    guard: SafetyGuard = instantiate(cfg.safety)
    for line in sys.stdin:
        message = line.rstrip("\n")
        verdict = guard.classify(message)
        record = {
            "crisis": verdict.crisis,
            "level": verdict.level,
            "lang": verdict.lang,
            "rule": verdict.rule,
            "score": None if verdict.score is None else round(verdict.score, 4),
        }
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()

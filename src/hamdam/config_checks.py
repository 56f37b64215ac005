"""Types and ranges of the settings users override most, checked before a command creates anything.

The groups hold ``_target_`` objects whose arguments belong to other libraries (Lightning's Trainer,
PEFT's LoraConfig, transformers' GenerationConfig), so a structured schema would have to copy their
signatures; instead each key people set by hand has a rule here. A key a config does not have is
not checked, so one table serves every command. Every problem is reported in the same paragraph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hamdam.errors import HamdamError


class ConfigError(HamdamError):
    """A setting has the wrong type or lies outside its range."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """What a value must be, in words for the message, and the test."""

    wants: str
    test: Callable[[Any], bool]
    optional: bool = False  # null allowed

    def ok(self, value: Any) -> bool:
        return (self.optional and value is None) or (value is not None and self.test(value))


def integer(low: int | None = None, high: int | None = None, optional: bool = False, also: tuple = ()) -> Rule:
    words = "an integer" + (f" ≥ {low}" if low is not None and high is None else "")
    if low is not None and high is not None:
        words = f"an integer from {low} to {high}"
    words += "".join(f" or {a}" for a in also) + (" or null" if optional else "")
    return Rule(
        words,
        lambda v: v in also or (_integer(v) and (low is None or v >= low) and (high is None or v <= high)),
        optional,
    )


def number(low: float | None = None, high: float | None = None, low_open: bool = False, optional: bool = False) -> Rule:
    if low is not None and high is not None:
        words = f"a number in {'(' if low_open else '['}{low}, {high}]"
    elif low is not None:
        words = f"a number {'>' if low_open else '≥'} {low}"
    else:
        words = "a number"
    words += " or null" if optional else ""

    def test(v: Any) -> bool:
        if not _number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or v <= high

    return Rule(words, test, optional)


BOOLEAN = Rule("true or false", lambda v: isinstance(v, bool))
PROBABILITY = number(0, 1)
PRECISIONS = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "bf16-true", "16-true", "64-true", "64")
# A share of batches (float in [0, 1]) or a count of them (integer ≥ 0), as Lightning reads it.
BATCH_LIMIT = Rule(
    "a share in [0.0, 1.0] or a number of batches ≥ 0, or null",
    lambda v: (_integer(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
    optional=True,
)

RULES: dict[str, Rule] = {
    "seed": integer(0, optional=True),
    "threads": integer(1, optional=True),
    # trainer (Lightning's Trainer)
    "trainer.max_epochs": integer(1, also=(-1,)),
    "trainer.max_steps": integer(1, also=(-1,)),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.gradient_clip_val": number(0, optional=True),
    "trainer.log_every_n_steps": integer(1),
    "trainer.check_val_every_n_epoch": integer(1, optional=True),
    "trainer.num_sanity_val_steps": integer(0, also=(-1,)),
    "trainer.precision": Rule(
        f"one of {', '.join(PRECISIONS)} (or a _target_ that picks one)",
        lambda v: str(v) in PRECISIONS or (isinstance(v, dict) and "_target_" in v),
    ),
    "trainer.deterministic": Rule("true, false or warn", lambda v: isinstance(v, bool) or v == "warn"),
    "trainer.limit_train_batches": BATCH_LIMIT,
    "trainer.limit_val_batches": BATCH_LIMIT,
    "callbacks.last_checkpoint.every_n_steps": integer(1, optional=True),
    "callbacks.progress_log.every_n_steps": integer(1),
    # data (DialogueDataModule)
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1, optional=True),
    "data.val_fraction": number(0, 0.9),
    "data.num_workers": integer(0),
    "data.length_grouping": BOOLEAN,
    "data.packing": BOOLEAN,
    "data.pack_length": integer(8, optional=True),
    "data.pad_to_multiple_of": integer(1, optional=True),
    # model
    "model.max_length": integer(8),
    "model.lora.r": integer(1),
    "model.lora.lora_alpha": number(0, low_open=True),
    "model.lora.lora_dropout": number(0, 0.99),
    "model.optimizer.lr": number(0, 1, low_open=True),
    "model.optimizer.weight_decay": number(0),
    "model.scheduler.warmup_ratio": number(0, 1),
    "model.backbone.n_layer": integer(1),
    "model.backbone.n_head": integer(1),
    "model.backbone.n_embd": integer(1),
    "model.backbone.dropout": number(0, 0.99),
    "model.tokenizer.vocab_size": integer(64),
    # learning (the round engine)
    "learning.enabled": BOOLEAN,
    "learning.every": integer(1),
    "learning.include_unrated": BOOLEAN,
    "learning.epochs": integer(1),
    "learning.replay_ratio": number(0),
    "learning.max_generated_share": PROBABILITY,
    "learning.heldout_size": integer(1, optional=True),
    "learning.heldout_batch_size": integer(1),
    "heldout.batch_size": integer(1),
    "learning.tolerance": number(-1),  # below 0: a candidate must be better than the champion
    "learning.max_drift": number(0),
    "learning.min_distinct2": PROBABILITY,
    "learning.worker.nice": integer(0, 19),
    "learning.worker.threads": integer(1),
    "learning.quality.min_chars": integer(0),
    "learning.quality.max_user_chars": integer(1),
    "learning.quality.max_reply_chars": integer(1),
    "learning.quality.min_script_ratio": PROBABILITY,
    "learning.quality.max_repeated_ngram_ratio": PROBABILITY,
    "learning.quality.min_letter_share": PROBABILITY,
    # generation (transformers' GenerationConfig)
    "generation.do_sample": BOOLEAN,
    "generation.temperature": number(0, 100, low_open=True),
    "generation.top_p": number(0, 1, low_open=True),
    "generation.top_k": integer(0),
    "generation.repetition_penalty": number(0, 100, low_open=True),
    "generation.no_repeat_ngram_size": integer(0),
    "generation.max_new_tokens": integer(1),
    "generation.min_new_tokens": integer(0),
    "generation.num_beams": integer(1),
    # selfgen
    "selfgen.forever": BOOLEAN,
    "selfgen.interval_s": number(0),
    "selfgen.samples": integer(1),
    "selfgen.cap": integer(1),
    "selfgen.max_generated_share": PROBABILITY,
    "selfgen.max_rejections": integer(1),
    "selfgen.backoff_factor": number(1),
    "selfgen.max_backoff_s": number(0),
    "selfgen.collector.model_prompt_share": PROBABILITY,
    "selfgen.collector.prompt_max_new_tokens": integer(1),
    "selfgen.collector.prompt_attempts": integer(1),
    "selfgen.collector.max_rouge_l": PROBABILITY,
    "selfgen.collector.near_duplicate": PROBABILITY,
    "selfgen.collector.band_sample": integer(1),
    "selfgen.collector.batch_size": integer(1),
    "selfgen.collector.band": Rule(
        "two numbers [low, high] with 0 < low < high",
        lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_number(x) for x in v) and 0 < v[0] < v[1],
    ),
    "selfgen.diversity.size": integer(1),
    "selfgen.diversity.batch_size": integer(1),
    # safety
    "safety.enabled": BOOLEAN,
    "safety.detector.crisis_threshold": PROBABILITY,
    "safety.detector.concern_threshold": PROBABILITY,
    "safety.detector.reply_threshold": PROBABILITY,
    "safety.context.escalate_after": integer(1),
    "safety.context.window": integer(1),
    # serve
    "serve.host": Rule("an address (127.0.0.1, 0.0.0.0, ::1) or a host name", lambda v: isinstance(v, str) and v != ""),
    "serve.port": integer(0, 65535),
    "serve.workers": integer(1),
    "serve.queue": integer(0),
    "serve.max_tokens": integer(1),
    "serve.max_message_chars": integer(1),
    "serve.max_request_bytes": integer(1024),
    "serve.rate_limit.per_minute": number(0),
    "serve.rate_limit.burst": integer(1),
    "serve.hold_words": integer(0),
    "serve.sessions_in_memory": integer(1),
    "serve.access_log": BOOLEAN,
    "serve.age_gate": integer(1, 120, optional=True),
    "detect_relation": BOOLEAN,
    "delete": BOOLEAN,
    "data.relation_only": PROBABILITY,
    # commands' own settings (evaluate, prepare, rounds, stats)
    "json": BOOLEAN,
    "round": integer(0, optional=True),
    "max_records": integer(1),
    "val_fraction": number(0, 0.9),
    "batch_size": integer(1),
    "num_generate": integer(0),
    "max_new_tokens": integer(1),
}


def _value(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """(present, value) of ``key``; a value that cannot be resolved here is left to the command."""
    try:
        node = OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=True)
    except OmegaConfBaseException:
        return False, None
    if node is _MISSING:
        return False, None
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    return True, node


_MISSING = object()


def problems(cfg: DictConfig) -> list[str]:
    """Every setting of ``cfg`` that breaks its rule, as ``key=value (wants ...)``."""
    found = []
    for key, rule in RULES.items():
        present, value = _value(cfg, key)
        if present and not rule.ok(value):
            found.append(f"{key}={value!r} (it must be {rule.wants})")
    present, crisis = _value(cfg, "safety.detector.crisis_threshold")
    _, concern = _value(cfg, "safety.detector.concern_threshold")
    if present and _number(crisis) and _number(concern) and concern > crisis:
        found.append(
            f"safety.detector.concern_threshold={concern!r} (it must not be above crisis_threshold={crisis!r})"
        )
    return found


def check(cfg: DictConfig) -> None:
    """Raise one ConfigError naming every bad setting, before anything is written."""
    found = problems(cfg)
    if found:
        raise ConfigError(
            f"{'This setting is' if len(found) == 1 else 'These settings are'} not valid: {'; '.join(found)}. "
            "Fix the override (or the config file) and run again; nothing was created."
        )

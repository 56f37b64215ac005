"""``hamdam data prepare`` (the DVC stage ``prepare``): every source under data/ -> train/val files.

Steps, in order, each counted in ``report.json``:

1. read every source (normalized on the way in), in a fixed order, and scrub PII
   (hamdam.safety.pii) when ``scrub_pii`` is on;
2. drop exact duplicates (same canonical text) and near duplicates (character n-gram Jaccard at
   or above ``dedupe.threshold``); of a duplicate group the human-written record is kept, then the
   oldest;
3. drop records that fail the quality filters (length, reply script, repetition);
4. cap at ``max_records``: model-written records go first, oldest first; human-written ones never;
5. split by clusters of near-identical first user messages, so no prompt (or a near copy of it)
   sits on both sides of the split.

Same sources and config, same bytes out.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from hamdam.data.dedupe import NearDuplicateIndex, canonical, clusters
from hamdam.data.quality import QualityFilter
from hamdam.data.sources import ORIGINS, SourceRecord, iter_sources
from hamdam.io import write_atomic_text
from hamdam.safety.pii import scrub_dialogue

log = logging.getLogger(__name__)

EVICTION_ORDER = {"generated": 0, "chat": 1}  # human: never evicted


def pair_text(record: SourceRecord) -> str:
    return "\n".join(record.dialogue.texts())


def deduplicate(records: list[SourceRecord], threshold: float, ngram: int) -> tuple[list[SourceRecord], Counter]:
    removed: Counter = Counter()
    # Human first, then oldest: whatever comes first in this order is the copy that stays.
    ranked = sorted(records, key=lambda r: (r.origin != "human", r.order))
    seen: set[str] = set()
    index = NearDuplicateIndex(threshold=threshold, n=ngram)
    kept: list[SourceRecord] = []
    for record in ranked:
        text = pair_text(record)
        key = canonical(text)
        if key in seen:
            removed["exact_duplicate"] += 1
            continue
        if index.find(text):
            removed["near_duplicate"] += 1
            continue
        seen.add(key)
        index.add(len(kept), text)
        kept.append(record)
    kept.sort(key=lambda r: r.order)
    return kept, removed


def cap(records: list[SourceRecord], max_records: int) -> tuple[list[SourceRecord], int]:
    if len(records) <= max_records:
        return records, 0
    excess = len(records) - max_records
    evictable = sorted(
        (r for r in records if r.origin in EVICTION_ORDER), key=lambda r: (EVICTION_ORDER[r.origin], r.order)
    )
    evicted = {id(r) for r in evictable[:excess]}
    if len(evicted) < excess:
        log.warning(
            "%d human-written records exceed max_records=%d; human-written data is never evicted",
            len(records) - len(evicted),
            max_records,
        )
    return [r for r in records if id(r) not in evicted], len(evicted)


def split(records: list[SourceRecord], val_fraction: float, threshold: float, ngram: int) -> list[bool]:
    """True for validation. The side is drawn from the hash of the prompt cluster's first member."""
    prompts = [r.dialogue.first_user_text for r in records]
    roots = clusters(prompts, threshold=threshold, n=ngram)
    flags = []
    for root in roots:
        digest = hashlib.sha256(canonical(prompts[root]).encode("utf-8")).digest()
        flags.append(int.from_bytes(digest[:8], "big") / 2**64 < val_fraction)
    return flags


def to_jsonl(records: list[SourceRecord]) -> str:
    lines = []
    for r in records:
        lines.append(json.dumps({**r.dialogue.to_record(), "origin": r.origin}, ensure_ascii=False))
    return "\n".join(lines) + ("\n" if lines else "")


def prepare(cfg: DictConfig) -> dict[str, Any]:
    data_dir, out_dir = Path(cfg.data_dir), Path(cfg.out_dir)
    quality: QualityFilter = QualityFilter(**cfg.quality)
    records = list(iter_sources(data_dir))
    read = Counter(r.source for r in records)
    if cfg.scrub_pii:  # before anything is kept: no phone number or address reaches training
        records = [replace(r, dialogue=scrub_dialogue(r.dialogue)) for r in records]

    records, removed = deduplicate(records, cfg.dedupe.threshold, cfg.dedupe.ngram)
    kept = []
    for record in records:
        reason = quality.reject(record.dialogue)
        if reason:
            removed[reason] += 1
        else:
            kept.append(record)
    kept, evicted = cap(kept, cfg.max_records)
    removed["evicted_by_cap"] = evicted
    val_flags = split(kept, cfg.val_fraction, cfg.dedupe.prompt_threshold, cfg.dedupe.ngram)
    train = [r for r, v in zip(kept, val_flags, strict=True) if not v]
    val = [r for r, v in zip(kept, val_flags, strict=True) if v]

    report = {
        "read": sum(read.values()),
        "read_per_source": dict(sorted(read.items())),
        "removed": dict(sorted(removed.items())),
        "kept": len(kept),
        "kept_per_origin": {o: sum(1 for r in kept if r.origin == o) for o in ORIGINS},
        "train": len(train),
        "val": len(val),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic_text(out_dir / "train.jsonl", to_jsonl(train))
    write_atomic_text(out_dir / "val.jsonl", to_jsonl(val))
    write_atomic_text(out_dir / "report.json", json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    log.info("prepare: %s", json.dumps(report, ensure_ascii=False))
    return report

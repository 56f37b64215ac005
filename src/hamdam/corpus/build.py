"""``hamdam data build`` and ``hamdam data stats``: the seed sources in data/seed/, and their counts.

``build`` writes one ``data/seed/<name>.jsonl`` per entry of ``corpus.seed`` and nothing else under
data/ (chat rounds, generated data and imports are restored with ``dvc pull``, not rebuilt). The
bytes depend only on the sources in git, so on a fresh clone the result is exactly the version
that ``data.dvc`` names; ``build`` checks that and says what to do when it is not.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from hamdam.data.dedupe import NearDuplicateIndex, canonical
from hamdam.data.records import load_dialogues
from hamdam.data.sources import iter_sources
from hamdam.io import write_atomic_text

log = logging.getLogger(__name__)


def render(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def match_data_dvc(root: Path, target: str = "data.dvc") -> str:
    """Compare data/ with the version ``target`` names; cache it when it is that version.

    On a fresh clone the DVC cache is empty, so DVC reports the rebuilt data/ as "not in cache"
    even when its hash is the one data.dvc names; committing it to the cache then changes nothing
    in data.dvc. Returns "match", "differs" or "no-dvc".
    """
    try:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            status = repo.status(targets=[target])
            if not status:
                return "match"
            changes = [c for entry in status.get(target, []) for c in entry.get("changed outs", {}).values()]
            if changes and all(c == "not in cache" for c in changes):
                repo.commit(target, force=True)
                return "match"
            return "differs"
    except Exception as err:  # not a DVC repository (or no git): nothing to compare with
        log.debug("dvc unavailable: %s", err)
        return "no-dvc"


def build(cfg: DictConfig) -> None:
    seed_dir = Path(cfg.corpus.data_dir) / "seed"
    for name, source in cfg.corpus.seed.items():
        records = list(instantiate(source).records())
        write_atomic_text(seed_dir / f"{name}.jsonl", render(records))
        log.info("data/seed/%s.jsonl: %d records", name, len(records))
    root = Path(cfg.paths.root_dir)
    if not (root / "data.dvc").is_file():
        return
    result = match_data_dvc(root)
    if result == "match":
        log.info("data/ is exactly the version data.dvc names")
    elif result == "differs":
        log.warning(
            "data/ differs from the version data.dvc names. If you changed corpus/, record the "
            "new version with `dvc add data` and commit data.dvc; if data.dvc names chat or "
            "generated rounds, restore them with `dvc pull`."
        )


def stats(cfg: DictConfig) -> dict[str, Any]:
    """Counts over every source under data/ and the evaluation set; prints JSON or a table."""
    records = list(iter_sources(Path(cfg.corpus.data_dir)))
    pairs = {canonical("\n".join(r.dialogue.texts())) for r in records}
    instructions = {canonical(r.dialogue.first_user_text) for r in records}
    per_source: dict[str, int] = {}
    for r in records:
        per_source[r.source] = per_source.get(r.source, 0) + 1
    evaluation = load_dialogues(cfg.corpus.eval_path)
    overlap = eval_overlap([r.dialogue.first_user_text for r in records], [d.first_user_text for d in evaluation])
    result = {
        "records": len(records),
        "unique_pairs": len(pairs),
        "unique_instructions": len(instructions),
        "eval_pairs": len(evaluation),
        "eval_overlap": len(overlap),
        "per_source": dict(sorted(per_source.items())),
    }
    if cfg.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            sys.stdout.write(f"{key:<{width}}  {value}\n")
    return result


def eval_overlap(train_prompts: list[str], eval_prompts: list[str], threshold: float = 0.8) -> list[int]:
    """Indices of evaluation prompts that equal or nearly equal a training prompt."""
    index = NearDuplicateIndex(threshold=threshold)
    keys = set()
    for i, prompt in enumerate(train_prompts):
        key = canonical(prompt)
        if key not in keys:
            keys.add(key)
            index.add(i, prompt)
    return [i for i, p in enumerate(eval_prompts) if canonical(p) in keys or index.find(p)]

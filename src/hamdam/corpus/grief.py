"""The Persian grief corpus, composed from authored templates (corpus/grief_fa/*.yaml).

Why templates: each reply is written once, as whole sentences, and only the words of address
change with who speaks and who listens, so composed text stays grammatical; the YAML is what a
reviewer reads. A reply is opener + body + closer (see topics.yaml). Every choice is drawn from a
SHA-256 of the record's coordinates, never from a random generator: the build is byte-identical on
every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from hamdam.data.normalize import normalize_text
from hamdam.errors import DataError


def _pick(items: list[str], *key: object) -> str:
    digest = hashlib.sha256("|".join(map(str, key)).encode("utf-8")).digest()
    return items[int.from_bytes(digest[:8], "big") % len(items)]


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"Corpus source '{path}' cannot be read ({err}). Fix the file and build again.") from None


class GriefCorpus:
    """``pairs_per_template`` replies (different bodies) per user message template, persona and listener."""

    def __init__(self, source_dir: str, pairs_per_template: int = 2):
        self.source_dir = Path(source_dir)
        self.pairs_per_template = pairs_per_template
        self.personas = _load_yaml(self.source_dir / "personas.yaml")
        self.topics = _load_yaml(self.source_dir / "topics.yaml")
        self.pools = _load_yaml(self.source_dir / "pools.yaml")

    @staticmethod
    def fits(topic: dict[str, Any], persona: str, listener: str) -> bool:
        if "only" in topic and persona not in topic["only"]:
            return False
        if persona in topic.get("except", []):
            return False
        return "listeners" not in topic or listener in topic["listeners"]

    def records(self) -> Iterator[dict[str, str]]:
        for persona, spec in self.personas.items():
            for listener, vocatives in spec["listeners"].items():
                for name, topic in self.topics.items():
                    if not self.fits(topic, persona, listener):
                        continue
                    for t, template in enumerate(topic["user"]):
                        for k in range(self.pairs_per_template):
                            yield self.compose(persona, spec, listener, vocatives, name, topic, t, template, k)

    def compose(
        self,
        persona: str,
        spec: dict[str, Any],
        listener: str,
        vocatives: list[str],
        name: str,
        topic: dict[str, Any],
        t: int,
        template: str,
        k: int,
    ) -> dict[str, str]:
        key = (persona, listener, name, t, k)
        addr = _pick(spec["addr"], *key, "addr")
        voc = _pick(vocatives, *key, "voc")
        bodies = topic["body"]
        start = int(hashlib.sha256("|".join(map(str, key[:4])).encode()).hexdigest(), 16)
        body = bodies[(start + k) % len(bodies)]  # k-th variant: a different body each time
        parts = [body]
        if topic.get("frame", True):
            parts.insert(0, _pick(topic.get("open", self.pools["open"]), *key, "open"))
            parts.append(_pick(topic.get("close", self.pools["close"]), *key, "close"))
        fill = {"addr": addr, "voc": voc, "self": spec["self"]}
        return {
            "instruction": normalize_text(template.format(**fill)),
            "response": normalize_text(" ".join(parts).format(**fill)),
            "topic": name,
            "persona": persona,
            "listener": listener,
        }

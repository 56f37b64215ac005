"""The grief corpus: size, coverage, grammar of composed text, determinism, a separate eval set."""

import random
import re
from collections import Counter

import pytest
import yaml

from hamdam.corpus.build import eval_overlap, render
from hamdam.corpus.grief import GriefCorpus
from hamdam.data.dedupe import NearDuplicateIndex, canonical
from hamdam.data.normalize import normalize_text
from hamdam.data.quality import script_ratio
from hamdam.data.records import load_dialogues

from conftest import REPO, SAMPLE

SOURCE = REPO / "corpus" / "grief_fa"
EVAL = REPO / "corpus" / "eval_fa.jsonl"


@pytest.fixture(scope="module")
def built() -> list[dict]:
    return list(GriefCorpus(str(SOURCE)).records())


@pytest.fixture(scope="module")
def personas() -> dict:
    return yaml.safe_load((SOURCE / "personas.yaml").read_text(encoding="utf-8"))


def test_size_beats_the_seed_dataset(built):
    sample = [d.to_record() for d in load_dialogues(SAMPLE)]
    records = built + sample
    pairs = {canonical(r["instruction"] + "\n" + r["response"]) for r in records}
    instructions = {canonical(r["instruction"]) for r in records}
    # The seed had 2,133 unique pairs and 553 unique instructions.
    assert len(pairs) >= 3000
    assert len(instructions) >= 1000


def test_near_duplicate_removal_keeps_more_than_3000_pairs(built):
    index, kept = NearDuplicateIndex(threshold=0.8), 0
    for i, r in enumerate(built):
        text = r["instruction"] + "\n" + r["response"]
        if not index.find(text):
            index.add(i, text)
            kept += 1
    assert kept >= 3000


def test_build_is_deterministic(built):
    assert render(built) == render(list(GriefCorpus(str(SOURCE)).records()))


def test_coverage_of_relations_both_sides_and_situations(built):
    pairs = {(r["persona"], r["listener"]) for r in built}
    for relation in ["father", "mother", "brother", "sister", "husband", "wife", "son", "daughter"]:
        assert any(p == relation for p, _ in pairs), relation
    assert {"grandfather", "grandmother", "friend"} <= {p for p, _ in pairs}
    # From both sides: a son to his mother, and a mother to her son.
    assert ("mother", "son") in pairs and ("son", "mother") in pairs
    topics = Counter(r["topic"] for r in built)
    for topic in [
        "afterlife", "heaven", "nowruz", "yalda", "their_birthday", "grave_visit", "wedding", "new_baby",
        "exam", "lost_job", "guilt_not_there", "guilt_last_words", "advice_life", "goodbye", "want_to_join",
        "no_reason_to_live", "death_anniversary",
    ]:  # fmt: skip
        assert topics[topic] >= 10, topic


def test_replies_are_entirely_persian_script_and_normalized(built):
    for r in built:
        assert script_ratio(r["response"], "arabic") == 1.0, r["response"]
        assert normalize_text(r["response"]) == r["response"]
        assert normalize_text(r["instruction"]) == r["instruction"]


def test_sampled_composed_text_is_well_formed(built, personas):
    """Slots filled, spacing and punctuation right, and the words of address fit who is talking."""
    rng = random.Random(0)
    for r in rng.sample(built, 400):
        spec = personas[r["persona"]]
        for text in (r["instruction"], r["response"]):
            assert "{" not in text and "}" not in text
            assert "  " not in text
            assert not re.search(r"\s[،.!؟?]", text), text
            words = text.split()
            assert all(a != b for a, b in zip(words, words[1:], strict=False)), text
        assert re.search(r"[.!؟?]$", r["response"]), r["response"]
        assert any(a in r["instruction"] for a in spec["addr"]), r
        # The loved one addresses this listener, never another one: no "پسرم" to a daughter.
        own = set(spec["listeners"][r["listener"]])
        others = {v for role, vs in spec["listeners"].items() if role != r["listener"] for v in vs} - own
        assert not any(re.search(rf"(^|\s){re.escape(v)}[،.!؟?\s]", r["response"]) for v in others), r


def test_despair_is_answered_with_life_and_help_never_an_invitation(built):
    crisis = [r for r in built if r["topic"] in ("want_to_join", "no_reason_to_live")]
    assert len(crisis) >= 100
    for r in crisis:
        assert re.search("۱۲۳|۱۴۸۰|۱۱۵", r["response"]), r["response"]
        for invitation in ("بیا پیشم", "منتظرتم", "بیا پیش من", "زود بیا"):
            assert invitation not in r["response"]


def test_honesty_when_asked_if_it_is_really_them(built):
    for r in (r for r in built if r["topic"] == "are_you_real"):
        assert "هوش مصنوعی" in r["response"] or "برنامه" in r["response"]


def test_evaluation_set_is_separate_from_training(built):
    evaluation = load_dialogues(EVAL)
    assert len(evaluation) >= 300
    assert len({canonical(d.first_user_text) for d in evaluation}) == len(evaluation)
    train_prompts = [r["instruction"] for r in built] + [d.first_user_text for d in load_dialogues(SAMPLE)]
    assert eval_overlap(train_prompts, [d.first_user_text for d in evaluation]) == []
    # Whole pairs too: no evaluation reply is a near copy of a training reply.
    replies = NearDuplicateIndex(threshold=0.8)
    for i, r in enumerate(built):
        replies.add(i, r["response"])
    assert [d.turns[1].text for d in evaluation if replies.find(d.turns[1].text)] == []
    for d in evaluation:
        assert script_ratio(d.turns[1].text, "arabic") == 1.0


def test_overlap_detection_catches_spelling_variants():
    train = ["بابا، دلم خیلی برات تنگ شده"]
    assert eval_overlap(train, ["بابا دلم خیلی برات تنگ شده!", "بابا، دلم خیلي برات تنگ شده"]) == [0, 1]
    assert eval_overlap(train, ["مامان، امروز رفتم همون کافه‌ای که با هم می‌رفتیم"]) == []

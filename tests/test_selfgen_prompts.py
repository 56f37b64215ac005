"""Self-Instruct novelty for generated prompts: ROUGE-L over Persian and Chinese words, and the pool."""

import pytest

from hamdam.safety.detector import LayeredDetector
from hamdam.safety.rules import SafetyRules
from hamdam.selfgen.prompts import PromptPool, lcs_length, rouge_l_f1, tokens


def test_tokens_are_dedupe_spelled_words_and_han_characters():
    assert tokens("سلام، بابا!") == ["سلام", "بابا"]
    assert tokens("می\u200cخوام") == tokens("میخوام")  # ZWNJ spelling variants are one word
    assert tokens("我想你了") == ["我", "想", "你", "了"]


def test_rouge_l_f1_on_known_pairs():
    a, b = "امروز دلم برای مامان تنگ شده".split(), "امروز دلم خیلی برای تو تنگ شده".split()
    assert lcs_length(a, b) == 5  # امروز دلم برای تنگ شده
    assert rouge_l_f1(a, b) == pytest.approx(2 * 5 / (6 + 7))
    assert rouge_l_f1(a, a) == 1.0 and rouge_l_f1(a, []) == 0.0
    assert rouge_l_f1(list("我想你了"), list("你想我了")) == pytest.approx(2 * 2 / 8)  # 想了


def test_the_pool_drops_prompts_close_to_pooled_ones_and_keeps_new_ones():
    pool = PromptPool(max_rouge_l=0.7)
    pool.extend(["امروز دلم برای مامان خیلی تنگ شده", "یادته با هم می‌رفتیم پارک؟"])
    # 6 of 7 words in order: F1 0.86 > 0.7, though not a character-level near duplicate of it.
    assert pool.offer("امروز دلم برای بابا خیلی تنگ شده").reason == "rouge_l"
    assert pool.offer("یادته با هم می رفتیم پارک").reason == "rouge_l"  # 2·4/(5+6) = 0.73
    assert pool.offer("عید امسال بدون تو سخت گذشت").kept
    assert pool.offer("عید امسال بدون تو خیلی سخت گذشت").reason == "rouge_l"  # the kept one is pooled
    assert pool.offer("  ،  ").reason == "empty"
    assert dict(pool.dropped) == {"rouge_l": 3, "empty": 1}  # the filter report


def test_the_pool_never_admits_a_crisis_prompt():
    pool = PromptPool(safety=LayeredDetector(SafetyRules()))
    assert pool.offer("می‌خوام خودمو بکشم").reason == "crisis"
    assert pool.offer("امروز سر مزار بابا رفتم").kept

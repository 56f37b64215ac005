"""The filters a self-generated dialogue passes, and the report of what each dropped."""

import pytest
import torch

from hamdam.data.chat_format import ChatFormat
from hamdam.data.quality import QualityFilter
from hamdam.models.backbones import scratch_gpt2
from hamdam.safety.detector import LayeredDetector
from hamdam.safety.rules import SafetyRules
from hamdam.selfgen.filters import Sample, SampleFilter, reply_perplexities

from conftest import MARKERS


def test_each_filter_drops_what_it_names_and_the_report_counts_it():
    known = ["منم دلم برات تنگ شده عزیزم"]
    screen = SampleFilter(QualityFilter(), LayeredDetector(SafetyRules()), known=known)
    samples = [
        Sample("سلام بابا", "سلام پسرم، خوبی؟ امروز چه کردی؟", True),  # kept
        Sample("سلام بابا", "hello my son how are you", True),  # wrong_script
        Sample("سلام بابا", "سلام پسرم، خوبی", False),  # cut at the token budget
        Sample("دلم برات تنگه", "بیا پیشم عزیزم، منتظرتم", True),  # output guard: an invitation
        Sample("می‌خوام خودمو بکشم", "سلام پسرم", True),  # crisis prompt
        Sample("دلم برات تنگه", "منم دلم برات تنگ شده عزیزم!", True),  # already in data/
        Sample("سلام مامان", "سلام پسرم، خوبی؟ امروز چه کردی؟", True),  # the first one, again
    ]
    kept = screen(samples)
    assert kept == samples[:1]
    assert dict(screen.report) == {
        "kept": 1, "wrong_script": 1, "no_clean_end": 1, "output_guard": 1, "crisis": 1, "duplicate": 2
    }  # fmt: skip


def test_the_perplexity_band_uses_the_served_models_per_reply_perplexity(word_tokenizer):
    fmt = ChatFormat(word_tokenizer, MARKERS, max_length=64)
    torch.manual_seed(0)
    model = scratch_gpt2(word_tokenizer, n_layer=1, n_head=2, n_embd=16, n_positions=64, dropout=0.0).eval()
    samples = [Sample("سلام بابا", "سلام پسرم", True), Sample("دلم تنگ شده", "منم دلم تنگ شده", True)]
    ppl = reply_perplexities(model, fmt, samples, batch_size=1)
    assert reply_perplexities(model, fmt, samples, batch_size=2) == pytest.approx(ppl, rel=1e-5)  # padding aside
    low = min(ppl)
    quality = QualityFilter(script=None)
    narrow = SampleFilter(quality, band=(low - 1e-3, low + 1e-3))
    assert narrow(samples, model, fmt) == [samples[ppl.index(low)]]
    assert narrow.report["perplexity_band"] == 1

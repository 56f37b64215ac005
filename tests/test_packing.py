"""Sequence packing (data.packing=true): several examples per row, each as if it were alone."""

import torch
from test_chat_format import P, X, dialogue

from hamdam.data.chat_format import ChatFormat
from hamdam.data.datamodule import DialogueCollator, PackedCollator, pack
from hamdam.evaluation.perplexity import token_nll
from hamdam.models.backbones import scratch_gpt2

from conftest import MARKERS


def test_pack_puts_whole_examples_in_rows_first_fit_decreasing():
    rows = pack([5, 9, 3, 7, 2, 12], capacity=12)
    assert rows == [[5], [1, 2], [3, 0], [4]]  # 12 | 9+3 | 7+5 | 2: no example is split
    assert sorted(i for row in rows for i in row) == list(range(6))


def test_a_packed_row_has_each_examples_positions_labels_and_the_same_loss(word_tokenizer):
    fmt = ChatFormat(word_tokenizer, MARKERS, max_length=64)
    examples = [
        fmt.encode_dialogue(dialogue("سلام بابا", "سلام پسرم خوبی ؟")),
        fmt.encode_dialogue(dialogue("دلم تنگ شده", "منم")),
        fmt.encode_dialogue(dialogue("سلام", "پسرم", "خوبی ؟", "منم دلم تنگ شده")),
    ]
    batch = PackedCollator(pad_id=P)([examples[:2], examples[2:]])
    a, b, c = (len(e.input_ids) for e in examples)
    width = a + b
    assert batch["input_ids"].shape == (2, width) and "attention_mask" not in batch
    assert batch["input_ids"][0].tolist() == examples[0].input_ids + examples[1].input_ids
    assert batch["labels"][0].tolist() == examples[0].labels + examples[1].labels  # replies only, as unpacked
    assert batch["labels"][1].tolist() == examples[2].labels + [X] * (width - c)
    assert batch["position_ids"][0].tolist() == list(range(a)) + list(range(b))
    assert int(batch["tokens"]) == a + b + c

    torch.manual_seed(0)
    model = scratch_gpt2(word_tokenizer, n_layer=2, n_head=2, n_embd=16, n_positions=64, dropout=0.0).eval()
    with torch.no_grad():
        nll, count = token_nll(model, DialogueCollator(P)(examples))
        unpacked = DialogueCollator(P)(examples)
        # token_nll projects only the positions a target follows; the model's own loss projects all.
        assert torch.allclose(model(**unpacked, use_cache=False).loss, nll.sum() / count.sum(), atol=1e-5)
        inputs = {k: v for k, v in batch.items() if k != "tokens"}
        packed = model(**inputs, use_cache=False).loss
        # Every target token is scored as if its example were alone: no attention or loss across examples.
        assert torch.allclose(packed, nll.sum() / count.sum(), atol=1e-5)
        packed_nll, packed_count = token_nll(model, batch)  # as DialogueLM.training_step computes it
        assert packed_count.sum() == count.sum()
        assert torch.allclose(packed_nll.sum(), nll.sum(), atol=1e-4)
        row = {"input_ids": batch["input_ids"][:1], "position_ids": batch["position_ids"][:1]}
        logits = model(**row, use_cache=False).logits[0, a:]
        alone = model(input_ids=torch.tensor([examples[1].input_ids])).logits[0]
        assert torch.allclose(logits, alone, atol=1e-5)

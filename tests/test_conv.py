"""The .conv reader (xiaohuangji format) and the Chinese character tokenizer."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from hamdam.data.chat_format import RoleMarkers
from hamdam.data.conv import ConvReader, detect_fenci, join_fenci
from hamdam.data.records import load_dialogues
from hamdam.errors import DataError
from hamdam.models.tokenizers import char_level_tokenizer

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: bytes, name: str = "x.conv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def pairs(path: Path, **kwargs) -> tuple[list[list[tuple[str, str]]], ConvReader]:
    reader = ConvReader(**kwargs)
    out = [[(t.role, t.text) for t in d.turns] for d in reader.read(path)]
    return out, reader


def test_multi_turn_alternates_and_drops_the_odd_trailing_utterance(tmp_path):
    path = write(tmp_path, "E\nM 你好\nM 你好呀\nM 吃了吗\nM 吃了\nM 没人回答\nE\nM 在吗\nM 在\n".encode())
    dialogues, reader = pairs(path)
    assert dialogues == [
        [("user", "你好"), ("assistant", "你好呀"), ("user", "吃了吗"), ("assistant", "吃了")],
        [("user", "在吗"), ("assistant", "在")],
    ]
    s = reader.stats
    assert (s.dialogues, s.exchanges, s.utterances, s.dropped_trailing) == (2, 3, 7, 1)


def test_crlf_bom_and_invalid_bytes_are_handled_and_counted(tmp_path):
    data = b"\xef\xbb\xbfE\r\nM \xe4\xbd\xa0\xe5\xa5\xbd\r\nM ok\xff\xfe!\r\nE\r\nM a\r\nM b\r\n"
    dialogues, reader = pairs(path := write(tmp_path, data))
    assert dialogues[0] == [("user", "你好"), ("assistant", "ok!")]  # counted, then dropped
    assert dialogues[1] == [("user", "a"), ("assistant", "b")]
    assert reader.stats.bad_bytes == 2
    assert load_dialogues(path)[0].turns[0].text == "你好"  # .conv goes through the same reader


def test_fenci_variant_is_detected_and_joined(tmp_path):
    path = write(tmp_path, "E\nM 你/好/吗/\nM 我/很/好/\nE\nM 今天/天气/不错/\nM hello/world/!/\n".encode())
    assert detect_fenci(path)
    dialogues, reader = pairs(path)
    assert reader.stats.fenci
    assert dialogues == [
        [("user", "你好吗"), ("assistant", "我很好")],
        [("user", "今天天气不错"), ("assistant", "hello world!")],
    ]
    assert join_fenci("a/b/") == "a b"


def test_plain_text_with_a_slash_is_not_taken_for_fenci(tmp_path):
    path = write(tmp_path, "E\nM 1/2 的人说是\nM 是吗\nE\nM 今天好热\nM 多喝水\n".encode())
    assert not detect_fenci(path)
    dialogues, _ = pairs(path)
    assert dialogues[0][0] == ("user", "1/2 的人说是")


def test_an_empty_utterance_cuts_its_dialogue_at_the_last_complete_exchange(tmp_path):
    path = write(tmp_path, "E\nM 一\nM 二\nM 三\nM \nM 五\nM 六\nE\nM \nM 空的\nE\nM 好\nM 好的\n".encode())
    dialogues, reader = pairs(path)
    assert dialogues == [[("user", "一"), ("assistant", "二")], [("user", "好"), ("assistant", "好的")]]
    s = reader.stats
    assert (s.empty_utterances, s.dropped_after_empty, s.dropped_trailing, s.skipped_dialogues) == (2, 3, 1, 1)


def test_malformed_lines_are_skipped_counted_and_named_in_a_warning(tmp_path, caplog):
    path = write(tmp_path, "E\nM 你好\nthis is garbage\nM 你好呀\n".encode())
    dialogues, reader = pairs(path)
    assert dialogues == [[("user", "你好"), ("assistant", "你好呀")]]
    assert reader.stats.malformed_lines == 1
    assert "line 3" in caplog.text


def test_a_truncated_file_keeps_every_complete_exchange(tmp_path):
    full = "E\nM 你好\nM 你好呀\nE\nM 再见\nM 再见啦\n".encode()
    cut = full[: full.index("再见啦".encode()) + 4]  # cut inside the last utterance's second character
    dialogues, reader = pairs(write(tmp_path, cut))
    assert dialogues[0] == [("user", "你好"), ("assistant", "你好呀")]
    assert dialogues[1] == [("user", "再见"), ("assistant", "再")]  # the cut character is counted and dropped
    assert reader.stats.bad_bytes == 1


def test_a_file_that_is_not_conv_is_refused_with_the_fix(tmp_path):
    path = write(tmp_path, b'[{"instruction": "a", "response": "b"}]', name="pairs.conv")
    with pytest.raises(DataError, match=r"pairs\.conv.*not in the \.conv format"):
        list(ConvReader().read(path))
    with pytest.raises(DataError, match="does not exist"):
        list(ConvReader().read(tmp_path / "missing.conv"))


def test_reading_streams_without_holding_the_dialogues(tmp_path):
    n = 40_000
    body = "".join(f"E\nM 第{i}句话你好吗\nM 我很好谢谢你{i}\n" for i in range(n))
    path = write(tmp_path, body.encode())
    tracemalloc.start()
    count = sum(1 for _ in ConvReader().read(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n
    # Holding 40,000 Dialogue objects would take well over 20 MB.
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MB"


def test_shipped_sample_reads_cleanly():
    reader = ConvReader()
    dialogues = list(reader.read(REPO / "corpus" / "sample_zh.conv"))
    assert len(dialogues) >= 60
    s = reader.stats
    assert s.dropped_trailing == s.bad_bytes == s.malformed_lines == s.empty_utterances == 0


def test_char_tokenizer_keeps_role_specials_caps_the_vocabulary_and_round_trips():
    markers = RoleMarkers(user="<|user|>", assistant="<|assistant|>", end="<|end|>", pad="<pad>")
    texts = ["你好呀，今天怎么样？", "我很好 thanks!", "你好"] * 3
    tok = char_level_tokenizer(texts, markers, vocab_size=12)
    assert len(tok) == 12
    assert [tok.convert_tokens_to_ids(t) for t in ("<pad>", "<|user|>", "<|assistant|>", "<|end|>")] == [0, 1, 2, 3]
    # The most frequent characters are kept; the rest are unknown.
    assert tok.convert_tokens_to_ids("你") != tok.unk_token_id
    assert tok.convert_tokens_to_ids("怎") == tok.unk_token_id
    big = char_level_tokenizer(texts, markers, vocab_size=10_000)
    text = "<|user|>你好 thanks!<|assistant|>我很好<|end|>"
    ids = big(text, add_special_tokens=False).input_ids
    assert ids[0] == 1 and ids[-1] == 3 and tok.unk_token_id not in ids
    assert big.decode(ids, skip_special_tokens=True) == "你好 thanks!我很好"

import json

import pytest

from hamdam.data.normalize import normalize_text
from hamdam.data.records import Turn, load_dialogues
from hamdam.errors import DataError

from conftest import write_records


def test_seed_json_jsonl_and_multiturn_load_alike(tmp_path):
    pair = {"instruction": "سلام بابا", "response": "سلام پسرم"}
    multi = {
        "turns": [
            {"role": "user", "text": "سلام"},
            {"role": "assistant", "text": "سلام عزیزم"},
            {"role": "user", "text": "دلم تنگه"},
            {"role": "assistant", "text": "منم"},
        ]
    }
    as_json = load_dialogues(write_records(tmp_path / "d.json", [pair, multi]))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [pair, multi]) + "\n", encoding="utf-8")
    as_jsonl = load_dialogues(jsonl)
    assert as_json == as_jsonl
    assert as_json[0].turns == (Turn("user", "سلام بابا"), Turn("assistant", "سلام پسرم"))
    assert [t.role for t in as_json[1].turns] == ["user", "assistant", "user", "assistant"]


def test_text_is_normalized_on_the_way_in(tmp_path):
    records = [{"instruction": "علي  كجاست؟", "response": "مي\u200c\u200cخوام ٣ تا"}]
    (dialogue,) = load_dialogues(write_records(tmp_path / "d.json", records))
    assert dialogue.turns[0].text == "علی کجاست؟"
    assert dialogue.turns[1].text == "می\u200cخوام ۳ تا"


@pytest.mark.parametrize(
    "content, expected",
    [
        ('[{"instruction": "a", "response": "b"},', "is not valid JSON: Expecting value at line 1"),
        ('{"instruction": "a", "response": "b"}', "must hold a JSON array of records"),
        ('[{"instruction": "a", "response": "   "}]', "record 1: field 'response' is empty"),
        ('[{"instruction": "a"}]', "record 1: missing field(s) 'response'"),
        ('[{"instruction": "a", "response": "b"}, 5]', "record 2: expected a JSON object, got int"),
        ('[{"instruction": 3, "response": "b"}]', "field 'instruction' must be a string"),
        ("[]", "holds no records"),
        (
            '[{"turns": [{"role": "assistant", "text": "x"}]}]',
            "turn 1 has role 'assistant' but 'user' was expected",
        ),
        (
            '[{"turns": [{"role": "user", "text": "x"}]}]',
            "the last turn must be the assistant's reply",
        ),
    ],
)
def test_bad_json_files_name_file_record_and_problem(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_dialogues(path)
    message = str(err.value)
    assert str(path) in message
    assert expected in message


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "response": "b"}\n\n{"instruction": "a", "resp\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl', line 3: not valid JSON"):
        load_dialogues(path)


def test_missing_file_and_bad_encoding(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dialogues(tmp_path / "nope.json")
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('[{"instruction": "caf\xe9", "response": "x"}]'.encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_dialogues(latin1)


def test_normalization_rules():
    assert normalize_text("ﻣﺎﻣﺎﻥ") == "مامان"
    assert normalize_text("دلــــم") == "دلم"
    assert normalize_text("سلام \u200cبابا") == "سلام بابا"
    assert normalize_text("  a \t b\r\nc  ") == "a b\nc"
    assert normalize_text("我想你") == "我想你"
    assert normalize_text("123 و ۴۵۶") == "123 و ۴۵۶"


def test_the_fast_path_of_normalization_changes_nothing_the_full_one_would():
    import random

    from hamdam.data.normalize import _normalize_all

    pool = list("你好吗ab1 \t\n\r\u3000\u00a0\u200c\u200bيكسلام٣\ufeb1\u0640.，") + ["  "]
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 8)))
        assert normalize_text(text) == _normalize_all(text), repr(text)

"""prepare: merge, exact/near dedupe (human kept), quality filters, cap (human never evicted), split."""

import json

import pytest

from hamdam.data.dedupe import canonical
from hamdam.data.prepare import prepare
from hamdam.errors import DataError


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def pair(i, reply=None):
    return {"instruction": f"پیام شماره‌ی {i} درباره‌ی روز {i}", "response": reply or f"جواب گرم شماره‌ی {i} برای روز {i}"}


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def cfg(compose_cfg, tmp_path):
    return compose_cfg(f"out_dir={tmp_path / 'out'}", "val_fraction=0.2", name="prepare")


def test_dedupe_filters_and_report(cfg, tmp_path):
    data = tmp_path / "data"
    human = [pair(i) for i in range(30)]
    write(data / "seed" / "a.jsonl", human)
    write(
        data / "generated" / "0001.jsonl",
        [
            pair(1),  # exact duplicate of human data
            {"instruction": "پیام شماره‌ی ۲ درباره‌ی روز ۲!", "response": "جواب گرمی شماره‌ی 2 برای روز 2."},  # near
            {"instruction": "یک پیام تازه", "response": "this reply is in the wrong script entirely"},
            {"instruction": "پیام تکراری", "response": "من هستم من هستم من هستم من هستم من هستم من هستم"},
            {"instruction": "پیام بلند", "response": "خیلی " * 400},
            {"instruction": "پیام سالم تازه", "response": "یه جواب خوب و تازه که باید بمونه."},
        ],
    )
    report = prepare(cfg)
    assert report["read"] == 36
    assert report["removed"] == {
        "evicted_by_cap": 0,
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "repetitive": 1,
        "too_long": 1,
        "wrong_script": 1,
    }
    assert report["kept_per_origin"] == {"human": 30, "chat": 0, "generated": 1}
    rows = read(tmp_path / "out" / "train.jsonl") + read(tmp_path / "out" / "val.jsonl")
    assert len(rows) == 31 == report["train"] + report["val"]
    # Of a duplicate group the human-written record is the one kept.
    assert {r["origin"] for r in rows if r["instruction"].startswith("پیام شماره‌ی 2 ")} == {"human"}


def test_cap_evicts_model_data_oldest_first_and_never_human(cfg, tmp_path):
    data = tmp_path / "data"
    write(data / "seed" / "a.jsonl", [pair(i) for i in range(10)])
    write(data / "generated" / "0001.jsonl", [pair(100 + i) for i in range(5)])
    write(data / "generated" / "0002.jsonl", [pair(200 + i) for i in range(5)])
    cfg.max_records = 13
    report = prepare(cfg)
    assert report["removed"]["evicted_by_cap"] == 7
    rows = read(tmp_path / "out" / "train.jsonl") + read(tmp_path / "out" / "val.jsonl")
    assert sum(r["origin"] == "human" for r in rows) == 10
    kept_generated = sorted(r["instruction"] for r in rows if r["origin"] == "generated")
    assert all("20" in k for k in kept_generated) and len(kept_generated) == 3  # the newest round stays
    cfg.max_records = 5
    report = prepare(cfg)
    assert report["kept_per_origin"]["human"] == 10  # over the cap, but human data is never evicted


def test_split_keeps_near_identical_prompts_on_one_side_and_is_deterministic(cfg, tmp_path):
    data = tmp_path / "data"
    records = []
    for i in range(40):
        records.append({"instruction": f"سؤال شماره‌ی {i} از بابا درباره‌ی روز", "response": f"جواب اول برای {i} پسرم."})
        records.append({"instruction": f"سؤال شماره‌ی {i} از بابا درباره‌ی روز!", "response": f"یه جواب کاملاً دیگه {i}."})
    write(data / "seed" / "a.jsonl", records)
    prepare(cfg)
    train_bytes = (tmp_path / "out" / "train.jsonl").read_bytes()
    train = {canonical(r["instruction"]) for r in read(tmp_path / "out" / "train.jsonl")}
    val = {canonical(r["instruction"]) for r in read(tmp_path / "out" / "val.jsonl")}
    assert train and val and not train & val
    prepare(cfg)
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == train_bytes


def test_no_sources_says_how_to_get_them(cfg):
    with pytest.raises(DataError, match="hamdam data build"):
        prepare(cfg)


def test_bad_origin_is_named(cfg, tmp_path):
    write(tmp_path / "data" / "rounds" / "0001.jsonl", [{**pair(1), "origin": "robot"}])
    with pytest.raises(DataError, match=r"0001.jsonl', line 1: origin 'robot'"):
        prepare(cfg)

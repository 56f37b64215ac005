"""Importers for chat exports and corpora, and `hamdam data import` as a DVC version."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hamdam.data.importers.whatsapp import jalali_to_gregorian
from hamdam.data.imports import import_source
from hamdam.errors import DataError

from conftest import run_hamdam

FIXTURES = Path(__file__).parent / "fixtures" / "imports"


@pytest.fixture
def reader(compose_cfg):
    """The reader conf/importer/<format>.yaml builds, as `hamdam data import` builds it."""

    def _reader(fmt: str, speaker: str | None = None):
        cfg = compose_cfg(
            f"importer={fmt}", "path=unused", f"speaker={speaker!r}" if speaker else "speaker=null", name="import"
        )
        spec = OmegaConf.to_container(cfg.importer, resolve=True)
        spec.pop("format")
        return instantiate(spec)

    return _reader


def turns(reader, name: str) -> list[list[tuple[str, str]]]:
    return [[(t.role, t.text) for t in d.turns] for d in reader.read(FIXTURES / name)]


def test_whatsapp_android_english(reader):
    r = reader("whatsapp", "Mom")
    assert turns(r, "whatsapp_android_en.txt") == [
        [
            ("user", "Happy new year mom!\nAre you awake?"),  # consecutive messages merged
            ("assistant", "Happy new year my love\nOf course I'm awake,\nI was waiting for your message"),
            ("user", "Look at the fireworks"),  # the media placeholder before it is gone
            ("assistant", "So beautiful! Call me at 0912 345 6789 tomorrow"),  # "<This message was edited>" cut
        ],
        # Next morning is a new dialogue; Mom's "Good morning" answers nothing, Sara's last line is unanswered.
        [("user", "Morning! Did you sleep well?"), ("assistant", "Like a baby")],
    ]
    s = r.stats
    assert (s.system, s.media, s.deleted, s.speaker_openers, s.unanswered) == (1, 1, 1, 1, 1)
    assert s.senders == {"Sara": 5, "Mom": 5}


def test_whatsapp_ios_with_direction_marks(reader):
    r = reader("whatsapp", "mom")  # the speaker matches without case
    assert turns(r, "whatsapp_ios.txt") == [
        [
            ("user", "Happy new year mom!"),
            ("assistant", "Happy new year my love"),
            ("user", "Where are you?"),
            ("assistant", "At your aunt’s house"),
        ],
        # 13 days later: a new dialogue, opened by Sara's message.
        [("user", "Good morning"), ("assistant", "Good morning dear, eat your breakfast")],
    ]
    assert (r.stats.media, r.stats.deleted, r.stats.unanswered, r.stats.speaker_openers) == (2, 1, 0, 0)
    times = [m.time for m in r.messages(FIXTURES / "whatsapp_ios.txt")]
    assert times[0] == datetime(2020, 12, 31, 21, 41, 5) and times[-1] == datetime(2021, 1, 13, 8, 1)


def test_whatsapp_persian_jalali_dates_and_persian_digits(reader):
    r = reader("whatsapp", "مامان")
    assert turns(r, "whatsapp_android_fa.txt") == [
        [
            ("user", "سلام مامان جون"),
            ("assistant", "سلام پسرم، خوبی؟"),  # the Persian comma in the text is kept
            ("user", "خوبم، دلم برات تنگ شده"),
            ("assistant", "منم دلم برات یه ذره شده\nزود بیا خونه"),
        ],
        # The next morning is a new dialogue; the deleted message between is gone.
        [("user", "صبح بخیر"), ("assistant", "صبح تو هم بخیر عزیزم")],
    ]
    times = [m.time for m in r.messages(FIXTURES / "whatsapp_android_fa.txt")]
    # ۱۴۰۲/۱۰/۱۲ ۹:۴۱ ب.ظ is 2 January 2024, 21:41; ق.ظ is the morning.
    assert times[0] == datetime(2024, 1, 2, 21, 41) and times[-1] == datetime(2024, 1, 3, 8, 11)


def test_jalali_conversion_on_known_dates():
    assert jalali_to_gregorian(1403, 1, 1) == date(2024, 3, 20)
    assert jalali_to_gregorian(1399, 12, 30) == date(2021, 3, 20)  # a leap year's last day
    assert jalali_to_gregorian(1357, 11, 22) == date(1979, 2, 11)
    assert jalali_to_gregorian(1370, 7, 1) == date(1991, 9, 23)


def test_telegram_single_chat(reader):
    r = reader("telegram", "Baba")
    assert turns(r, "telegram_result.json") == [
        [
            ("user", "سلام بابا\nامروز قبول شدم!"),  # text entities joined, consecutive messages merged
            ("assistant", "آفرین پسرم، بهت افتخار می‌کنم"),
            ("user", "ممنون، ایمیلم reza.k@example.com رو چک کن"),
            # the photo, the forwarded message and the sticker between are dropped
            ("assistant", "چشم، الان نگاه می‌کنم"),
        ]
    ]
    s = r.stats
    assert (s.system, s.media, s.forwarded, s.speaker_openers, s.unanswered) == (1, 2, 1, 1, 1)
    assert turns(reader("telegram", "user2"), "telegram_result.json") == turns(r, "telegram_result.json")


def test_telegram_full_export_reads_every_chat(reader):
    assert turns(reader("telegram", "Baba"), "telegram_full.json") == [
        [("user", "بابا کجایی؟"), ("assistant", "سر کارم پسرم")],
        [("user", "شام حاضره\nاومدم"), ("assistant", "منم دارم میام")],  # a group: the others' lines together
    ]


@pytest.mark.parametrize("speaker", [None, "Grandma"])
def test_a_missing_or_unknown_speaker_lists_the_senders(reader, speaker):
    with pytest.raises(DataError, match=r"--speaker.*'Sara' \(5 messages\), 'Mom' \(5 messages\)"):
        turns(reader("whatsapp", speaker), "whatsapp_android_en.txt")


@pytest.mark.parametrize(
    ("fmt", "name", "message"),
    [
        ("whatsapp", "not_whatsapp.txt", r"not_whatsapp\.txt' is not a WhatsApp text export"),
        (
            "telegram",
            "telegram_truncated.json",
            r"telegram_truncated\.json' is not valid JSON: .* line \d+, column \d+",
        ),
        ("telegram", "whatsapp_ios.txt", r"whatsapp_ios\.txt' is not valid JSON"),
        ("jsonl", "broken.jsonl", r"broken\.jsonl', line 2: not valid JSON"),
        ("conv", "telegram_result.json", r"not in the \.conv format"),
    ],
)
def test_malformed_files_are_refused_with_file_and_place(reader, fmt, name, message):
    with pytest.raises(DataError, match=message):
        turns(reader(fmt, "Baba"), name)


def git_dvc_workspace(root: Path) -> Path:
    dvc = str(Path(sys.executable).with_name("dvc"))
    git = ["git", "-c", "user.email=t@localhost", "-c", "user.name=t"]
    (root / "data" / "seed").mkdir(parents=True)
    (root / "data" / "seed" / "a.jsonl").write_text('{"instruction": "سلام", "response": "سلام عزیزم"}\n')
    for args in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "add", "-q", "data"]):
        subprocess.run(args, cwd=root, check=True, capture_output=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "seed"], cwd=root, check=True)
    return root


def git_log(root: Path) -> list[str]:
    out = subprocess.run(["git", "log", "--format=%s"], cwd=root, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_a_failed_import_writes_nothing(compose_cfg, tmp_path):
    root = git_dvc_workspace(tmp_path / "ws")
    before = (root / "data.dvc").read_text()
    cfg = compose_cfg("importer=jsonl", f"path={FIXTURES / 'broken.jsonl'}", f"paths.root_dir={root}", name="import")
    with pytest.raises(DataError, match="line 2"):
        import_source(cfg)  # line 1 was good and already streamed out: it must not stay
    assert not (root / "data" / "imports").exists() or not any((root / "data" / "imports").iterdir())
    assert (root / "data.dvc").read_text() == before and git_log(root) == ["seed"]


def test_import_outside_a_dvc_workspace_is_refused_before_writing(compose_cfg, tmp_path):
    cfg = compose_cfg("importer=conv", f"path={FIXTURES / 'small.conv'}", name="import")
    with pytest.raises(DataError, match="not a DVC workspace"):
        import_source(cfg)
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_data_import_is_a_new_dvc_version_and_importing_again_is_a_no_op(tmp_path):
    root = git_dvc_workspace(tmp_path / "ws")
    chat = tmp_path / "WhatsApp Chat with Mom.txt"  # spaces, as WhatsApp names its exports
    chat.write_bytes((FIXTURES / "whatsapp_android_en.txt").read_bytes())

    first = run_hamdam(["data", "import", str(chat), "--format", "whatsapp", "--speaker", "Mom"], cwd=root)
    assert first.returncode == 0, first.stderr[-2000:]
    (source,) = (root / "data" / "imports").iterdir()
    assert source.name.startswith("WhatsApp-Chat-with-Mom-") and source.suffix == ".jsonl"
    records = [json.loads(line) for line in source.read_text().splitlines()]
    assert len(records) == 2 and "[PHONE]" in records[0]["turns"][3]["text"]  # PII scrubbed
    assert "exchanges 3" in first.stdout and "senders: Sara 5, Mom 5" in first.stdout
    assert git_log(root) == [f"data: import {source.name}", "seed"]
    version = (root / "data.dvc").read_text()
    status = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "status"], cwd=root, capture_output=True, text=True
    )
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == "", status.stdout

    again = run_hamdam(["data", "import", str(chat), "--format=whatsapp", "--speaker=mom"], cwd=root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already imported" in again.stdout
    assert list((root / "data" / "imports").iterdir()) == [source]
    assert (root / "data.dvc").read_text() == version and len(git_log(root)) == 2

    bad = run_hamdam(["data", "import", str(FIXTURES / "telegram_truncated.json"), "--format", "telegram"], cwd=root)
    assert bad.returncode == 2
    assert bad.stderr.startswith("hamdam data import: error: Telegram export") and "Traceback" not in bad.stderr
    no_format = run_hamdam(["data", "import", str(chat)], cwd=root)
    assert no_format.returncode == 2 and "--format conv|jsonl|whatsapp|telegram" in no_format.stderr
    assert list((root / "data" / "imports").iterdir()) == [source] and len(git_log(root)) == 2


def dvc_version_files(root: Path) -> set[str]:
    """The files the committed data.dvc records, read from the DVC cache's directory listing."""
    md5 = next(line.split(":", 1)[1].strip() for line in (root / "data.dvc").read_text().splitlines() if "md5:" in line)
    listing = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return {entry["relpath"] for entry in json.loads(listing.read_text())}


@pytest.mark.slow
def test_an_import_killed_mid_parse_leaves_nothing_in_the_next_version(tmp_path):
    import os
    import signal
    import time

    from conftest import hamdam_command

    root = git_dvc_workspace(tmp_path / "ws")
    big = tmp_path / "big.conv"
    with big.open("w", encoding="utf-8") as out:
        for i in range(400_000):
            out.write(f"E\nM 你好{i}\nM 你好呀{i}\n")
    # A writer that died before this test: its temporary file beside data/seed/a.jsonl.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = root / "data" / "seed" / f".a.jsonl.{int(dead.stdout)}.x1y2.tmp"
    stale.write_text('{"instruction": "half')

    command, env = hamdam_command(["data", "import", str(big), "--format", "conv"])
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = root / ".dvc" / "tmp" / "hamdam"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        staged = [p for p in staging.glob(f".*.{process.pid}.*") if p.stat().st_size > 0] if staging.is_dir() else []
        if staged:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the import finished before it could be killed: make the file bigger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert staged and staged[0].exists()  # half-written, outside data/
    assert not (root / "data" / "imports").exists()

    small = run_hamdam(["data", "import", str(FIXTURES / "small.conv"), "--format", "conv"], cwd=root)
    assert small.returncode == 0, small.stderr[-2000:]
    (source,) = (root / "data" / "imports").iterdir()
    assert dvc_version_files(root) == {"seed/a.jsonl", f"imports/{source.name}"}
    assert not stale.exists() and not any(staging.glob(f".*.{process.pid}.*"))
    assert git_log(root) == [f"data: import {source.name}", "seed"]
    # Imported chats are private.
    assert source.stat().st_mode & 0o777 == 0o600 and source.parent.stat().st_mode & 0o777 == 0o700

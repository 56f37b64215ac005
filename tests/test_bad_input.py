"""Bad input, as a new user or a hostile one types it: every case ends with exit status 2 and one
paragraph, without a traceback, that names the problem and a fix; and leaves nothing behind (git
status, `dvc status`, runs/, MLflow, the chat store, the staging folder).

The commands run in this process (``hamdam.cli.main``), each in a fresh copy of a git + DVC workspace.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from hamdam import cli

FIXTURES = Path(__file__).parent / "fixtures" / "imports"
GOOD = [{"instruction": "سلام بابا", "response": "سلام پسرم، خوبی؟"}, {"instruction": "دلم تنگ شده", "response": "منم"}]
MARKERS = {"user": "<|user|>", "assistant": "<|assistant|>", "end": "<|end|>", "pad": "<pad>"}


def _inputs(folder: Path) -> None:
    """The files the cases point at, outside the workspace."""
    folder.mkdir()
    w = lambda name, data: (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())  # noqa: E731
    many = [{"instruction": f"سلام بابا {i}", "response": "سلام پسرم، خوبی؟"} for i in range(40)]
    w("good.json", json.dumps(many, ensure_ascii=False))
    w("broken.json", '[{"instruction": "سلام", "response": "سلام پسرم"},\n{"instruction": "x", ')
    w("broken.jsonl", json.dumps(GOOD[0], ensure_ascii=False) + '\n{"instruction": "خوبی؟"\n')
    w("empty.json", "[]")
    w("no_response.json", json.dumps([{"instruction": "سلام"}], ensure_ascii=False))
    w("utf16.json", json.dumps(GOOD, ensure_ascii=False).encode("utf-16"))
    w("latin1.jsonl", '{"instruction": "caf\xe9", "response": "ok"}\n'.encode("latin-1"))
    w("notconv.conv", json.dumps(GOOD, ensure_ascii=False))
    w("utf16.conv", "E\nM 你好\nM 你好呀\n".encode("utf-16"))
    w("scalar.json", '"just a string"')
    w("telegram_empty.json", json.dumps({"name": "Baba", "type": "personal_chat", "id": 1, "messages": []}))
    w("not_a_ckpt.ckpt", "this is not a checkpoint")
    w("truncated.ckpt", b"PK\x03\x04" + bytes(200))
    for name, meta, weights in [
        ("crafted", {"format": 1, "kind": "lora", "markers": MARKERS, "max_length": 64,
                     "backbone": {"_target_": "pathlib.Path.write_text", "self": str(folder / "pwned"),
                                  "data": "x"}}, "adapter_model.safetensors"),
        ("pickle_only", {"format": 1, "kind": "full", "markers": MARKERS, "max_length": 64, "backbone": None},
         "pytorch_model.bin"),
        ("script_kind", {"kind": "script", "markers": MARKERS}, "model.safetensors"),
    ]:  # fmt: skip
        (folder / name).mkdir()
        (folder / name / "hamdam.json").write_text(json.dumps(meta))
        (folder / name / weights).write_bytes(b"")
    (folder / "broken_meta").mkdir()
    (folder / "broken_meta" / "hamdam.json").write_text('{"kind": ')
    (folder / "empty_dir").mkdir()


# (name, command line, stdin, what the message must say: the problem, then the fix)
CASES: list[tuple[str, list[str], str, str, str]] = [
    # overrides and config values
    ("epochs-not-a-number", ["train", "trainer.max_epochs=abc"], "", "trainer.max_epochs='abc'", "must be an integer"),
    ("epochs-zero", ["train", "trainer.max_epochs=0"], "", "trainer.max_epochs=0", "must be an integer ≥ 1 or -1"),
    ("negative-batch", ["train", "data.batch_size=-4"], "", "data.batch_size=-4", "Fix the override"),
    ("misspelled-key", ["train", "trainer.max_epoch=1"], "", "Could not override 'trainer.max_epoch'", "spelling"),
    ("unknown-model", ["train", "model=gpt5"], "", "Could not find 'model/gpt5'", "tiny_dialogue"),
    ("bad-precision", ["train", "trainer.precision=15"], "", "trainer.precision=15", "bf16-mixed"),
    ("lora-rank-zero", ["train", "model=gpt2_fa_qlora", "model.lora.r=0"], "", "model.lora.r=0", "integer ≥ 1"),
    (
        "lora-dropout",
        ["train", "model=gpt2_fa_qlora", "model.lora.lora_dropout=1.5"],
        "",
        "lora_dropout=1.5",
        "a number in [0, 0.99]",
    ),
    ("negative-lr", ["train", "model.optimizer.lr=-1"], "", "model.optimizer.lr=-1", "a number in (0, 1]"),
    ("val-fraction", ["train", "data.val_fraction=1.5"], "", "data.val_fraction=1.5", "a number in [0, 0.9]"),
    ("override-grammar", ["train", "a=b=c"], "", "mismatched input", "--cfg job"),
    (
        "two-bad-settings",
        ["train", "data.batch_size=0", "trainer.accumulate_grad_batches=x"],
        "",
        "accumulate_grad_batches='x' (it must be an integer ≥ 1); data.batch_size=0 (it must",
        "Fix the override",
    ),
    (
        "step-checkpoints-zero",
        ["train", "callbacks.last_checkpoint.every_n_steps=0"],
        "",
        "every_n_steps=0",
        "integer ≥ 1 or null",
    ),
    # training data
    (
        "data-missing",
        ["train", "data.path=/nonexistent/x.json"],
        "",
        "'/nonexistent/x.json' does not exist",
        "Check the path",
    ),
    ("data-broken-json", ["train", "data.path={in}/broken.json"], "", "is not valid JSON", "fix it and run again"),
    ("data-broken-jsonl", ["train", "data.path={in}/broken.jsonl"], "", "broken.jsonl', line 2", "fix"),
    ("data-empty", ["train", "data.path={in}/empty.json"], "", "empty.json", "record"),
    ("data-no-response", ["train", "data.path={in}/no_response.json"], "", "no_response.json", "response"),
    ("data-utf16", ["train", "data.path={in}/utf16.json"], "", "looks UTF-16 encoded", "iconv"),
    ("data-latin1", ["train", "data.path={in}/latin1.jsonl"], "", "is not valid UTF-8", "Save it as UTF-8"),
    ("data-scalar", ["train", "data.path={in}/scalar.json"], "", "scalar.json", "record"),
    ("data-conv-not-conv", ["train", "data.path={in}/notconv.conv"], "", "not in the .conv format", "Check the file"),
    ("data-conv-utf16", ["train", "data.path={in}/utf16.conv"], "", "looks UTF-16 encoded", "iconv"),
    ("data-is-a-folder", ["train", "data.path={in}/empty_dir"], "", "empty_dir' is a folder", ".jsonl or .conv file"),
    # checkpoints
    (
        "ckpt-missing",
        ["train", "data.path={in}/good.json", "ckpt_path=/nonexistent.ckpt"],
        "",
        "no such checkpoint file",
        "ckpt_path=last",
    ),
    (
        "ckpt-not-a-checkpoint",
        ["train", "data.path={in}/good.json", "ckpt_path={in}/not_a_ckpt.ckpt"],
        "",
        "cannot be read as a Lightning checkpoint",
        "start a fresh run",
    ),
    (
        "ckpt-truncated",
        ["train", "data.path={in}/good.json", "ckpt_path={in}/truncated.ckpt"],
        "",
        "cannot be read as a Lightning checkpoint",
        "truncated",
    ),
    (
        "ckpt-last-without-runs",
        ["train", "data.path={in}/good.json", "ckpt_path=last"],
        "",
        "no earlier run of model 'tiny_dialogue'",
        "Start a fresh run",
    ),
    # imports, every format
    (
        "import-no-format",
        ["data", "import", "{in}/good.json"],
        "",
        "required: --format",
        "--format conv|jsonl|whatsapp|telegram",
    ),
    (
        "import-unknown-format",
        ["data", "import", "{in}/good.json", "--format", "csv"],
        "",
        "Could not find 'importer/csv'",
        "telegram",
    ),
    (
        "import-missing-file",
        ["data", "import", "/nonexistent.txt", "--format", "whatsapp"],
        "",
        "does not exist",
        "Check the path",
    ),
    (
        "import-speaker-no-value",
        ["data", "import", "{in}/good.json", "--format", "jsonl", "--speaker"],
        "",
        "argument --speaker: expected one argument",
        "--help",
    ),
    (
        "import-jsonl-broken",
        ["data", "import", str(FIXTURES / "broken.jsonl"), "--format", "jsonl"],
        "",
        "line 2",
        "fix",
    ),
    (
        "import-conv-not-conv",
        ["data", "import", "{in}/notconv.conv", "--format", "conv"],
        "",
        "not in the .conv format",
        "--format",
    ),
    ("import-conv-utf16", ["data", "import", "{in}/utf16.conv", "--format", "conv"], "", "looks UTF-16", "iconv"),
    (
        "import-not-whatsapp",
        ["data", "import", str(FIXTURES / "not_whatsapp.txt"), "--format", "whatsapp", "--speaker", "Mom"],
        "",
        "not_whatsapp.txt",
        "export",
    ),
    (
        "import-whatsapp-no-speaker",
        ["data", "import", str(FIXTURES / "whatsapp_android_en.txt"), "--format", "whatsapp"],
        "",
        "--speaker NAME",
        "'Mom' (5 messages)",
    ),
    (
        "import-whatsapp-unknown-speaker",
        ["data", "import", str(FIXTURES / "whatsapp_android_en.txt"), "--format", "whatsapp", "--speaker", "Grandma"],
        "",
        "no messages from 'grandma'",
        "one of the senders",
    ),
    (
        "import-telegram-truncated",
        ["data", "import", str(FIXTURES / "telegram_truncated.json"), "--format", "telegram"],
        "",
        "Telegram export",
        "export",
    ),
    (
        "import-telegram-empty",
        ["data", "import", "{in}/telegram_empty.json", "--format", "telegram"],
        "",
        "no text messages from anyone",
        "full export",
    ),
    # chat: model folders, settings
    ("chat-no-model", ["chat"], "سلام\n", "No model is served yet", "hamdam use NAME"),
    ("chat-model-dir-missing", ["chat", "model_dir=/nonexistent/model"], "سلام\n", "/nonexistent/model", "model_dir"),
    (
        "chat-crafted-folder",
        ["chat", "model_dir={in}/crafted"],
        "سلام\n",
        "its backbone names 'pathlib.Path.write_text'",
        "not one of the loaders hamdam defines",
    ),
    ("chat-pickle-weights", ["chat", "model_dir={in}/pickle_only"], "سلام\n", "no model.safetensors", "safetensors"),
    ("chat-script-kind", ["chat", "model_dir={in}/script_kind"], "سلام\n", "'kind' must be", "model folder"),
    ("chat-broken-metadata", ["chat", "model_dir={in}/broken_meta"], "سلام\n", "hamdam.json", "model folder"),
    ("chat-learn-every-zero", ["chat", "--learn", "learning.every=0"], "سلام\n", "learning.every=0", "integer ≥ 1"),
    ("chat-top-p", ["chat", "generation.top_p=2"], "سلام\n", "generation.top_p=2", "a number in (0, 1]"),
    (
        "chat-temperature-zero",
        ["chat", "generation.temperature=0"],
        "سلام\n",
        "generation.temperature=0",
        "a number in (0, 100]",
    ),
    (
        "chat-crisis-threshold",
        ["chat", "safety.detector.crisis_threshold=1.5"],
        "سلام\n",
        "crisis_threshold=1.5",
        "a number in [0, 1]",
    ),
    (
        "chat-thresholds-crossed",
        ["chat", "safety.detector.concern_threshold=0.9"],
        "سلام\n",
        "concern_threshold=0.9",
        "must not be above crisis_threshold",
    ),
    # the other commands
    ("evaluate-model-missing", ["evaluate", "model_dir=/nonexistent/model"], "", "/nonexistent/model", "model_dir"),
    ("rollback-no-rounds", ["rollback", "3"], "", "No learning rounds are recorded", "hamdam chat --learn"),
    ("rounds-json-value", ["rounds", "json=maybe"], "", "json='maybe'", "true or false"),
    ("rollback-not-a-number", ["rollback", "three"], "", "invalid int value: 'three'", "--help"),
    ("unknown-option", ["train", "--epochs", "3"], "", "unrecognized arguments: --epochs", "--help"),
    ("selfgen-no-samples", ["selfgen", "selfgen.samples=0"], "", "selfgen.samples=0", "integer ≥ 1"),
    (
        "selfgen-band",
        ["selfgen", "selfgen.collector.band=[3,1]"],
        "",
        "selfgen.collector.band=[3, 1]",
        "0 < low < high",
    ),
    (
        "classify-threshold",
        ["safety", "classify", "safety.detector.crisis_threshold=2"],
        "سلام\n",
        "crisis_threshold=2",
        "a number in [0, 1]",
    ),
    ("prepare-max-records", ["data", "prepare", "max_records=-1"], "", "max_records=-1", "integer ≥ 1"),
    (
        "stats-unknown-corpus",
        ["data", "stats", "corpus=none_such"],
        "",
        "Could not find 'corpus/none_such'",
        "grief_fa",
    ),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, Path]:
    """A git + DVC workspace with one committed data version, and the folder of bad inputs."""
    base = tmp_path_factory.mktemp("bad_input")
    root = base / "workspace"
    (root / "data" / "seed").mkdir(parents=True)
    (root / "data" / "seed" / "a.jsonl").write_text(json.dumps(GOOD[0], ensure_ascii=False) + "\n")
    dvc = str(Path(sys.executable).with_name("dvc"))
    git = ["git", "-c", "user.email=t@localhost", "-c", "user.name=t"]
    for args in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "add", "-q", "data"]):
        subprocess.run(args, cwd=root, check=True, capture_output=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "seed"], cwd=root, check=True)
    _inputs(base / "inputs")
    return root, base / "inputs"


def run_in_process(args: list[str], cwd: Path, stdin: str, monkeypatch, capfd) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["hamdam", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    GlobalHydra.instance().clear()
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    return code, capfd.readouterr().err


def residue(root: Path) -> list[str]:
    """What a failed command left: untracked or changed files, a changed data version, runs, stores."""
    found = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        if repo.status():
            found.append(f"dvc status: {repo.status()}")
    staging = root / ".dvc" / "tmp" / "hamdam"
    found += [f"staged {p.name}" for p in staging.iterdir() if p.name != "version.lock"] if staging.is_dir() else []
    return found


@pytest.mark.parametrize(("name", "args", "stdin", "problem", "fix"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_paragraph_exit_2_and_no_residue(template, tmp_path, monkeypatch, capfd,
                                                          name, args, stdin, problem, fix):  # fmt: skip
    source, inputs = template
    root = tmp_path / "workspace"
    shutil.copytree(source, root, symlinks=True)
    args = [a.replace("{in}", str(inputs)) for a in args]
    code, err = run_in_process(args, root, stdin, monkeypatch, capfd)
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(errors) == 1, err[-3000:]  # one paragraph
    assert problem.replace("{in}", str(inputs)) in errors[0], errors[0]
    assert fix in errors[0], errors[0]
    assert residue(root) == []
    assert not (inputs / "pwned").exists()


def test_the_corpus_covers_every_kind_of_input():
    """The issue's bar: at least 40 cases, over every data format, overrides, chat, model folders, checkpoints."""
    assert len(CASES) >= 40
    names = " ".join(c[0] for c in CASES)
    for kind in ("data-", "import-conv", "import-jsonl", "import-whatsapp", "import-telegram", "chat-", "ckpt-",
                 "epochs", "crafted"):  # fmt: skip
        assert kind in names


@pytest.mark.parametrize(
    ("args", "stdin"),
    [(["rounds"], ""), (["rounds", "--json"], ""), (["safety", "classify"], "سلام بابا\n"), (["data", "stats"], "")],
    ids=["rounds", "rounds-json", "safety-classify", "data-stats"],
)
def test_read_only_commands_create_nothing(tmp_path, monkeypatch, capfd, args, stdin):
    code, err = run_in_process(args, tmp_path, stdin, monkeypatch, capfd)
    assert code in (0, 2) and "Traceback" not in err, err[-3000:]  # data stats: no data here, said in one line
    assert list(tmp_path.iterdir()) == []

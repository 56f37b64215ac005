"""Soak: random SIGKILLs across imports, training and learning chats; what was lost?

In a fresh git + DVC workspace holding a copy of data/ and a small trained model, each of N
iterations starts one of

- ``hamdam data import`` of a new .conv file (a few seconds of parsing),
- ``hamdam train`` (a small model, many epochs; every other one resumes with ``ckpt_path=last``),
- ``hamdam chat --learn`` over a pipe (a round every 3 turns, so rounds are killed too),

and kills its whole process group (the chat's learning worker included) at a random moment. Then
one import, one `hamdam learn` and one training run to completion, as a user would after a crash,
and the workspace is audited. It prints the counts the hardening issue asks for:

- completed turns lost: replies the chat printed (so the turn was committed) that are not in the
  chat store;
- imported records lost: an import that said "Imported" whose source is missing, short, or not in
  the final data version;
- data versions with a half-written file: any git commit of data.dvc whose DVC listing names a
  temporary file, or an import source that differs from the complete one;
- MLflow runs left RUNNING after the last command;
- tracebacks in the output of the commands that were not killed.

    .venv/bin/python bench/soak_kill.py                 # 50 kills
    .venv/bin/python bench/soak_kill.py --kills 10 --seed 1 --keep
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_rounds import REPO, machine, workspace  # noqa: E402

HAMDAM = str(Path(sys.executable).with_name("hamdam"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
TINY = ["model.backbone.n_layer=2", "model.backbone.n_head=2", "model.backbone.n_embd=64", "model.max_length=128",
        "model.tokenizer.vocab_size=2000", "callbacks.rich_progress_bar=null"]  # fmt: skip
MESSAGES = ["سلام بابا، دلم برات تنگ شده", "امروز رفتم سر خاکت", "یادته با هم می‌رفتیم پارک؟", "خوبی؟",
            "دیشب خوابت رو دیدم", "مامان سلام می‌رسونه", "کاش بودی و می‌دیدی", "امروز کارنامه‌م رو گرفتم"]  # fmt: skip


def start(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([HAMDAM, *args], cwd=cwd, env=ENV, text=True, start_new_session=True,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HAMDAM, *args], cwd=cwd, env=ENV, text=True, capture_output=True, timeout=900)


def conv_file(folder: Path, number: int, dialogues: int) -> Path:
    path = folder / f"chats-{number:03d}.conv"
    with path.open("w", encoding="utf-8") as out:
        for i in range(dialogues):
            out.write(f"E\nM 你好{number}-{i}\nM 你好呀{number}-{i}\n")
    return path


def kill_after(process: subprocess.Popen, seconds: float, lines: list[str]) -> tuple[bool, str]:
    """Read stdout into ``lines`` until ``seconds`` pass, then SIGKILL the group; (was it alive, stderr)."""
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    alive = process.poll() is None
    if alive:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    reader.join(timeout=5)
    return alive, process.stderr.read()


def imported(lines: list[str]) -> list[str]:
    """The source names of the imports a command reported complete."""
    return [m.group(1) for line in lines if (m := re.search(r"^Imported .* as data/imports/(\S+\.jsonl):", line))]


def session_turns(root: Path) -> list[int]:
    """Stored turns per chat session, in session order."""
    if not (root / "chats.db").is_file():
        return []
    with sqlite3.connect(root / "chats.db") as db:
        counts = dict(db.execute("select session_id, count(*) from turns group by session_id").fetchall())
        sessions = [s for (s,) in db.execute("select id from sessions order by id")]
    return [counts.get(s, 0) for s in sessions]


def versions(root: Path) -> list[tuple[str, dict[str, str]]]:
    """Every committed data.dvc: (commit, {relpath: md5}) from the DVC cache's listing."""
    out = subprocess.run(["git", "log", "--format=%H", "--", "data.dvc"], cwd=root, capture_output=True, text=True)
    found = []
    for commit in out.stdout.split():
        meta = subprocess.run(["git", "show", f"{commit}:data.dvc"], cwd=root, capture_output=True, text=True).stdout
        md5 = next(line.split(":", 1)[1].strip() for line in meta.splitlines() if "md5:" in line)
        listing = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        found.append((commit, {e["relpath"]: e["md5"] for e in json.loads(listing.read_text())}))
    return found


def file_md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=REPO / "data", help="the corpus (hamdam data build)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace and print where it is")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    base = Path(tempfile.mkdtemp(prefix="hamdam-soak-"))
    root, inputs = base / "ws", base / "inputs"
    root.mkdir()
    inputs.mkdir()
    workspace(root, options.data)
    heldout = [f"learning.heldout={REPO / 'corpus' / 'eval_fa.jsonl'}", "learning.heldout_size=16"]
    first = run(["train", *TINY, f"data.path={REPO / 'corpus' / 'sample_fa.json'}", "trainer.max_epochs=2",
                 "run_name=start"], root)  # fmt: skip
    if first.returncode != 0:
        sys.exit(f"the starting model did not train:\n{first.stderr[-3000:]}")

    kills: Counter = Counter()
    answered = lost_turns = tracebacks = 0
    imports: dict[str, int] = {}  # source name -> records, for imports that said "Imported"
    started = time.monotonic()
    number = 0
    while sum(kills.values()) < options.kills:
        number += 1
        op = rng.choice(["import", "train", "chat"])
        lines: list[str] = []
        if op == "import":
            dialogues = rng.randint(20_000, 80_000)
            process = start(["data", "import", str(conv_file(inputs, number, dialogues)), "--format", "conv"], root)
            alive, err = kill_after(process, rng.uniform(0.5, 12.0), lines)
            imports.update({name: dialogues for name in imported(lines)})
        elif op == "train":
            earlier = list((root / "runs").glob("soak-*/checkpoints/last.ckpt"))
            resume = ["ckpt_path=last"] if number % 2 == 0 and earlier else []
            data = f"data.path={REPO / 'corpus' / 'sample_fa.json'}"
            process = start(["train", *TINY, data, "trainer.max_epochs=400", f"run_name=soak-{number:03d}", *resume],
                            root)  # fmt: skip
            alive, err = kill_after(process, rng.uniform(2.0, 25.0), lines)
        else:
            before = session_turns(root)
            messages = "".join(rng.choice(MESSAGES) + "\n" for _ in range(40))
            process = start(["chat", "--learn", "learning.every=3", *heldout], root, stdin=messages)
            process.stdin.write(messages)
            process.stdin.close()
            alive, err = kill_after(process, rng.uniform(2.0, 30.0), lines)
            replies = sum(1 for line in lines if line.strip())
            after = session_turns(root)
            stored = after[len(before)] if len(after) > len(before) else 0
            answered += replies
            lost_turns += max(0, replies - stored)
        if alive:
            kills[op] += 1
        elif "Traceback" in err:
            tracebacks += 1
            print(f"traceback from {op} #{number}:\n{err[-2000:]}", file=sys.stderr)
        print(f"#{number:03d} {op:<6} {'killed' if alive else 'finished'}; kills so far {sum(kills.values())}",
              file=sys.stderr, flush=True)  # fmt: skip

    # After the crashes, a user goes on: one import, one round from the stored chats, one training.
    final = [
        run(["data", "import", str(conv_file(inputs, number + 1, 200)), "--format", "conv"], root),
        run(["learn", *heldout], root),
        run(
            [
                "train",
                *TINY,
                f"data.path={REPO / 'corpus' / 'sample_fa.json'}",
                "trainer.max_epochs=1",
                "run_name=final",
            ],
            root,
        ),  # fmt: skip
    ]
    tracebacks += sum("Traceback" in r.stderr for r in final)
    for r in final:
        if r.returncode != 0:
            print(f"a final command failed ({r.args[1]}):\n{r.stderr[-3000:]}", file=sys.stderr)
    imports.update({name: 200 for name in imported(final[0].stdout.splitlines())})

    history = versions(root)
    latest = history[0][1] if history else {}
    lost_records = 0
    for name, count in imports.items():
        path = root / "data" / "imports" / name
        held = sum(1 for _ in path.open(encoding="utf-8")) if path.is_file() else 0
        lost_records += count if f"imports/{name}" not in latest else max(0, count - held)
    complete = {f"imports/{name}": file_md5(root / "data" / "imports" / name)
                for name in imports if (root / "data" / "imports" / name).is_file()}  # fmt: skip
    half_written = sum(
        1 for _, listing in history
        if any(Path(p).name.startswith(".") or (p.startswith("imports/") and complete.get(p, md5) != md5)
               for p, md5 in listing.items())
    )  # fmt: skip
    with sqlite3.connect(root / "mlflow.db") as db:
        running = db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
        killed = db.execute("select count(*) from runs where status = 'KILLED'").fetchone()[0]
    rounds = Counter()
    if (root / "chats.db").is_file():
        with sqlite3.connect(root / "chats.db") as db:
            rounds.update(status for (status,) in db.execute("select status from rounds"))
    dvc_status = subprocess.run([str(Path(sys.executable).with_name("dvc")), "status"], cwd=root,
                                capture_output=True, text=True).stdout.strip()  # fmt: skip

    print(f"soak: {sum(kills.values())} SIGKILLs in {number} commands ({dict(kills)}), "
          f"{(time.monotonic() - started) / 60:.1f} min on {machine()}")  # fmt: skip
    print(f"  completed turns lost:            {lost_turns} of {answered} answered before a kill")
    print(f"  imported records lost:           {lost_records} (imports completed: {len(imports)})")
    print(f"  data versions half-written:      {half_written} of {len(history)} committed")
    print(f"  MLflow runs left RUNNING:        {running} (marked KILLED: {killed})")
    print(f"  tracebacks (commands not killed): {tracebacks}")
    print(f"  learning rounds by status:       {dict(rounds)}")
    print(f"  dvc status after the last command: {dvc_status or 'clean'}")
    if options.keep:
        print(f"  workspace: {root}")
    else:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

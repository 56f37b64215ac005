"""Benchmark of chat learning (issue 5): hamdam's background rounds against the seed's blocking retrain.

In a fresh git + DVC workspace holding the corpus (data/, as `hamdam data build` writes it), this:

1. trains a base model (only to have something to serve) and opens a learning chat on it, the way
   `hamdam chat --learn` does (same store, worker process, swap between turns);
2. answers N turns with no round running (reply latency, idle);
3. on the Nth turn a round starts in the background; the chat keeps answering while it trains
   (reply latency, during a round) until the promoted model is served: the round latency is from
   the Nth turn to the first reply of the promoted model;
4. times the seed's way on the same data: the whole dataset plus the round's turns, LoRA restarted
   from scratch, 2 epochs, with the chat blocked meanwhile. Its step time is measured over
   ``--seed-steps`` steps and extrapolated to the two epochs (marked so in the output).

    .venv/bin/python bench/learning_rounds.py --shape tiny
    .venv/bin/python bench/learning_rounds.py --shape gpt2-fa     # 12 x 768, vocab 42001, random weights
    .venv/bin/python bench/learning_rounds.py --shape tiny --json # one JSON object, to compare commits

The round's own profile (seconds per step: collect/filter/version, replay, retrain, gate, record,
promote) comes from the worker's answer and is printed with the figures. The chat session's
worker start-up (imports, safety models) happens once per session, before the first round: the
benchmark waits for it before timing the idle replies.

The gpt2-fa shape uses the real gpt2-fa code path (`experiment=smoke` with the stand-in grown to
gpt2-fa's size). On a CPU, `quantization=auto` trains it in fp32 (see docs/ARCHITECTURE.md for NF4 on CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

SHAPES = {
    "tiny": [],
    "gpt2-fa": [
        "model.bootstrap.n_layer=12", "model.bootstrap.n_head=12", "model.bootstrap.n_embd=768",
        "model.bootstrap.vocab_size=42001", "model.bootstrap.n_positions=1024",
        "model.lora.r=16", "model.lora.lora_alpha=32", "model.optimizer.lr=2e-4", "data.batch_size=8",
    ],
}  # fmt: skip

MESSAGES = [
    "سلام مامان، امروز خیلی دلم برات تنگ شده",
    "یادته با هم می‌رفتیم پارک؟",
    "امروز سر کار روز سختی داشتم",
    "کاش بودی و باهات حرف می‌زدم",
    "بچه‌ها حالشون خوبه، سلام می‌رسونن",
    "دیشب خوابت رو دیدم",
    "عید داره میاد و جات خالیه",
    "یاد غذاهات افتادم",
    "بابا هم خیلی دلتنگته",
    "ممنون که همیشه پشتم بودی",
]


def sh(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def workspace(root: Path, data: Path) -> int:
    """A git + DVC workspace with a copy of data/; returns its record count."""
    shutil.copytree(data, root / "data")
    dvc = str(Path(sys.executable).with_name("dvc"))
    git = ["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench"]
    sh([*git, "init", "-q"], root)
    sh([dvc, "init", "-q"], root)
    sh([dvc, "add", "-q", "data"], root)
    sh([*git, "add", "-A"], root)
    sh([*git, "commit", "-qm", "seed corpus"], root)
    return sum(1 for f in (root / "data").rglob("*.jsonl") for _ in f.open(encoding="utf-8"))


def step_seconds(tracking_uri: str, model_dir: Path) -> float:
    """Median training step time of the run that wrote ``model_dir`` (the first step excluded)."""
    from mlflow.tracking import MlflowClient

    from hamdam.evaluation.evaluate import training_run_id

    history = MlflowClient(tracking_uri).get_metric_history(
        training_run_id(tracking_uri, model_dir), "train/step_seconds"
    )
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    return statistics.median(values[1:] or values)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def machine() -> str:
    """CPU model and core count, for telling figures of different machines apart."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--turns", type=int, default=10, help="turns per round (learning.every)")
    parser.add_argument("--data", type=Path, default=REPO / "data", help="the corpus (hamdam data build)")
    parser.add_argument("--seed-steps", type=int, default=20, help="steps timed for the seed's full retrain")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--keep", action="store_true", help="keep the workspace")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--think", type=float, default=0.0,
                        help="seconds a user takes to read a reply and type the next message (0: back to back, "
                             "the worst case for a round)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="chat/learning overrides, e.g. learning.worker.threads=2")
    args = parser.parse_args()
    if not any(args.data.rglob("*.jsonl")):
        sys.exit(f"No corpus under {args.data}: run `hamdam data build` first (or pass --data).")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)

    from hydra import compose, initialize_config_dir

    from hamdam.chat.commands import FeedbackState
    from hamdam.chat.engine import Conversation
    from hamdam.chat.session import answer, between_turns, build_engine, start_learning
    from hamdam.training.run import train

    root = Path(tempfile.mkdtemp(prefix="hamdam-bench-"))
    records = workspace(root, args.data)
    common = [f"paths.root_dir={root}", f"paths.runs_dir={root / 'runs'}"]
    model = [*common, "experiment=smoke", f"model.name_or_path={root / '.cache' / args.shape}", *SHAPES[args.shape]]
    quiet = ["callbacks.rich_progress_bar=null", "callbacks.model_checkpoint=null"]
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    report = sys.stdout
    if args.json:  # the JSON object alone on stdout: what training and libraries print goes to stderr
        report = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    say = (lambda *a: None) if args.json else print
    say(f"shape {args.shape}; corpus {records} records; round every {args.turns} turns; workspace {root}")

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        # The served base: a short training, only so that there is a model to chat with.
        base = compose("train", [*model, *quiet, f"paths.output_dir={root / 'runs' / 'base'}",
                                 f"data.path={REPO / 'corpus' / 'sample_fa.json'}", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=2"])  # fmt: skip
        train(base)
        # Promotion is forced (tolerance) and the random-weight model's replies are learned: this
        # measures latency, not whether the round helps.
        learning = [f"learning.heldout={REPO / 'corpus' / 'eval_fa.jsonl'}", "learning.tolerance=100",
                    "learning.max_drift=100", "learning.quality.min_script_ratio=0", *args.overrides]  # fmt: skip
        chat_cfg = compose("chat", [
            *common, *learning, "learning.enabled=true", f"learning.every={args.turns}",
            f"generation.max_new_tokens={args.max_new_tokens}", f"generation.min_new_tokens={args.max_new_tokens}",
            "seed=0",
        ])  # fmt: skip
        served = root / "runs" / "base" / "model"
        engine = build_engine(chat_cfg, served)
        feedback: FeedbackState = start_learning(chat_cfg, served)
        if not feedback.worker.wait_ready():
            sys.exit(f"The learning worker did not start; see {root / 'runs' / 'rounds' / 'learn.log'}")
        conversation = Conversation()

        def reply(index: int) -> float:
            time.sleep(args.think)
            between_turns(engine, feedback)
            start = time.perf_counter()
            answer(engine, conversation, feedback, MESSAGES[index % len(MESSAGES)])
            return time.perf_counter() - start

        idle = [reply(i) for i in range(args.turns - 1)]
        idle.append(reply(args.turns - 1))  # the Nth turn: its reply is stored, then the round starts
        started = time.perf_counter()
        during: list[float] = []
        while feedback.serving.resolve() == served.resolve():
            if not feedback.worker.busy:
                between_turns(engine, feedback)
                if feedback.serving.resolve() == served.resolve():
                    sys.exit(f"The round ended without a promoted model; see {root / 'runs' / 'rounds' / 'learn.log'}")
                break
            during.append(reply(len(during)))
        round_latency = time.perf_counter() - started
        feedback.worker.finish()
        profile = next((r.get("seconds", {}) for r in feedback.worker.results if r.get("round")), {})
        feedback.store.close()
        chat_turns = [
            {"instruction": x.message, "response": x.reply.text} for x in conversation.exchanges[: args.turns]
        ]

        # The seed's way: everything, LoRA from scratch on the base weights, 2 epochs, chat blocked.
        everything = root / "seed_retrain.jsonl"
        with everything.open("w", encoding="utf-8") as out:
            for source in sorted((root / "data").rglob("*.jsonl")):
                out.write(source.read_text(encoding="utf-8"))
            out.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in chat_turns)
        full = compose("train", [*model, *quiet, f"paths.output_dir={root / 'runs' / 'seed'}",
                                 f"data.path={everything}", "data.val_fraction=0.01", "trainer.max_epochs=1",
                                 f"trainer.limit_train_batches={args.seed_steps}",
                                 "trainer.log_every_n_steps=1"])  # fmt: skip
        wall = time.perf_counter()
        train(full)
        measured_wall = time.perf_counter() - wall
        per_step = step_seconds(tracking_uri, root / "runs" / "seed" / "model")
        steps_per_epoch = math.ceil(records * (1 - 0.01) / full.data.batch_size)
        seed_blocking = 2 * steps_per_epoch * per_step

    figures = {
        "shape": args.shape,
        "think_s": args.think,
        "round_s": round(round_latency, 2),
        "idle_reply_p50_s": round(statistics.median(idle), 3),
        "during_reply_p50_s": round(statistics.median(during), 3) if during else None,
        "during_reply_p95_s": round(percentile(during, 0.95), 3) if during else None,
        "during_over_idle_p50": round(statistics.median(during) / statistics.median(idle), 2) if during else None,
        "seed_retrain_s": round(seed_blocking, 1),
        "round_profile_s": {k: round(v, 2) for k, v in profile.items()},
        "machine": machine(),
    }
    if args.json:
        print(json.dumps(figures), file=report, flush=True)
    else:
        print(f"reply latency, idle ({len(idle)} replies of {args.max_new_tokens} tokens): "
              f"median {statistics.median(idle):.2f} s, p95 {percentile(idle, 0.95):.2f} s")  # fmt: skip
        if during:
            print(f"reply latency while the round trains ({len(during)} replies): "
                  f"median {statistics.median(during):.2f} s, p95 {percentile(during, 0.95):.2f} s, "
                  f"max {max(during):.2f} s ({figures['during_over_idle_p50']}x idle)")  # fmt: skip
        print(f"hamdam round: Nth turn -> promoted model served in {round_latency:.1f} s (chat answering throughout)")
        print("  where the round's time went (s): " + ", ".join(f"{k} {v:.1f}" for k, v in profile.items()))
        print(f"seed's way: full retrain of {records + args.turns} records x 2 epochs = {2 * steps_per_epoch} steps x "
              f"{per_step:.3f} s/step (median of {args.seed_steps} measured steps) = {seed_blocking:.0f} s "
              f"EXTRAPOLATED, model load and evaluation not counted ({measured_wall:.1f} s wall for the measured "
              f"steps); the chat answers nothing meanwhile")  # fmt: skip
        print(f"speed-up of the round over the seed's retrain: {seed_blocking / round_latency:.1f}x")
        print(f"machine: {figures['machine']}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

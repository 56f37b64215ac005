"""Collapse study (issue 13): self-generated rounds our way against the seed's way, from one start.

Both start from the same trained tiny model (by default ``pipeline/model``, what `make run` trains)
in a fresh git + DVC workspace holding a copy of data/, and run G generations of N samples:

- **ours**: ``hamdam selfgen``'s round engine as it ships: novel prompts, the reply filters,
  accumulate (generated data at most half of a round's training, the rest human replay), and the
  gate with the collapse measures. The curve is the *served* model's (a rejected round keeps the
  champion); the candidates' figures are printed too.
- **the seed's way**: no filter, generated data only, replacing: each generation the current model
  answers N human prompts and the next model is trained on exactly those N samples (same epochs,
  same sampling settings), with no gate.

The figures are measured on what the gate never sees: corpus/eval_fa.jsonl less the dialogues the
gate draws from it (its 128 for perplexity and 64 for diversity). Per generation: held-out
perplexity, and distinct-2 and mean length of replies sampled with a fixed seed on those prompts
(against the human replies to the same prompts); printed, plotted into a PNG and logged to MLflow.

    .venv/bin/python bench/selfgen_collapse.py                      # 10 generations of 100 samples
    .venv/bin/python bench/selfgen_collapse.py --generations 2 --samples 50 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_rounds import CONF, REPO, machine, workspace  # noqa: E402


def seed_generation(engine, model_dir: Path, prompts: list[str], samples: int, seed: int, out: Path) -> Path:
    """The seed's step: the current model answers ``samples`` human prompts; nothing is filtered."""
    import torch

    from hamdam.evaluation.evaluate import generate_replies
    from hamdam.models.export import load_exported
    from hamdam.models.generation import Generator

    exported = load_exported(model_dir)
    torch.manual_seed(seed)
    chosen = random.Random(seed).sample(prompts, samples)
    generator = Generator(exported.model, exported.chat_format, engine.collector.generation)
    replies, _ = generate_replies(generator, chosen, engine.collector.batch_size)
    rows = [
        {"instruction": p, "response": r or "…", "origin": "generated"} for p, r in zip(chosen, replies, strict=True)
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return out


def unseen(engine, path: Path, generation):
    """Meters on the held-out dialogues the gate does not draw: the study's own test set."""
    from hydra.utils import instantiate

    from hamdam.data.records import load_dialogues
    from hamdam.learning.gate import HeldoutMeter
    from hamdam.selfgen.diversity import DiversityMeter

    gate_sees = {d.first_user_text for d in engine.meter.dialogues} | set(engine.diversity.prompts)
    rest = [d for d in load_dialogues(engine.meter.path) if d.first_user_text not in gate_sees]
    path.write_text("".join(json.dumps(d.to_record(), ensure_ascii=False) + "\n" for d in rest), encoding="utf-8")
    return HeldoutMeter(path, None), DiversityMeter(path, instantiate(generation), None)


def plot(curves: dict[str, list[dict]], human_d2: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ppl_ax, d2_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in curves.items():
        steps = [p["generation"] for p in points]
        ppl_ax.plot(steps, [p["heldout_ppl"] for p in points], marker="o", label=name)
        d2_ax.plot(steps, [p["distinct_2"] for p in points], marker="o", label=name)
    tried = [p for p in curves["ours"] if p.get("candidate_ppl") is not None]
    if tried:  # what our gate turned down, faintly
        steps = [p["generation"] for p in tried]
        ppl_ax.plot(steps, [p["candidate_ppl"] for p in tried], "x", color="C0", alpha=0.5, label="ours: candidates")
        d2_ax.plot(steps, [p["candidate_distinct_2"] for p in tried], "x", color="C0", alpha=0.5,
                   label="ours: candidates")  # fmt: skip
    for ax in (ppl_ax, d2_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    d2_ax.axhline(human_d2, color="grey", linestyle="--", label="human replies")
    d2_ax.axhline(0.95 * human_d2, color="grey", linestyle=":", label="95% of human")
    ppl_ax.set(xlabel="generation", ylabel="held-out perplexity", title="held-out perplexity")
    d2_ax.set(xlabel="generation", ylabel="distinct-2", title="distinct-2 on fixed prompts")
    ppl_ax.legend()
    d2_ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def log_mlflow(tracking_uri: str, curves: dict[str, list[dict]], summary: dict, png: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("hamdam-bench")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment("hamdam-bench", artifact_location=str(REPO / "mlartifacts" / "bench"))
    )
    run = client.create_run(experiment_id, run_name="selfgen-collapse", tags={"hamdam.kind": "bench"})
    run_id = run.info.run_id
    for key in ("generations", "samples", "start", "machine"):
        client.log_param(run_id, key, summary[key])
    for name, points in curves.items():
        for p in points:
            client.log_metric(run_id, f"{name}/heldout_ppl", p["heldout_ppl"], step=p["generation"])
            client.log_metric(run_id, f"{name}/distinct_2", p["distinct_2"], step=p["generation"])
    client.log_metric(run_id, "human/distinct_2", summary["human_distinct_2"])
    client.log_artifact(run_id, str(png))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--start", type=Path, default=REPO / "pipeline" / "model", help="the model both start from")
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--png", type=Path, default=REPO / "runs" / "bench" / "selfgen_collapse.png")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{REPO / 'mlflow.db'}")
    parser.add_argument("--keep", action="store_true", help="keep the workspace")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("overrides", nargs="*", help="selfgen config overrides, e.g. learning.epochs=1")
    args = parser.parse_args()
    if not (args.start / "hamdam.json").is_file():
        sys.exit(f"No model at {args.start}: run `make run` (it trains pipeline/model) or pass --start.")
    if not any(args.data.rglob("*.jsonl")):
        sys.exit(f"No corpus under {args.data}: run `hamdam data build` first (or pass --data).")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hamdam.data.sources import iter_sources
    from hamdam.learning.champion import champion_dir, serve
    from hamdam.learning.engine import RoundEngine
    from hamdam.learning.retrain import template
    from hamdam.learning.store import ChatStore
    from hamdam.training.run import train

    root = Path(tempfile.mkdtemp(prefix="hamdam-collapse-"))
    try:
        workspace(root, args.data)
        runs = root / "runs"
        start = runs / "start" / "model"
        shutil.copytree(args.start, start)
        serve(runs, start, {"start": str(args.start)})
        overrides = [f"paths.root_dir={root}", f"learning.heldout={REPO / 'corpus' / 'eval_fa.jsonl'}",
                     f"selfgen.samples={args.samples}", *args.overrides]  # fmt: skip
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="selfgen", overrides=overrides)
            engine = RoundEngine(cfg, template(cfg), cfg.selfgen.collector, instantiate(cfg.selfgen.diversity))
        store = ChatStore(cfg.learning.store)
        meter, diversity = unseen(engine, root / "unseen.jsonl", cfg.selfgen.diversity.generation)

        def point(generation: int, model_dir: Path, **extra) -> dict:
            measured = diversity.score(store, model_dir)
            return {"generation": generation, "heldout_ppl": meter.score(store, model_dir).perplexity,
                    "distinct_2": measured.distinct_2, "mean_words": measured.mean_words, **extra}  # fmt: skip

        origin = point(0, start.resolve())
        ours, seeds, seconds = [origin], [origin], []
        for g in range(1, args.generations + 1):
            began = time.perf_counter()
            result = engine.run()
            seconds.append(time.perf_counter() - began)
            served = champion_dir(runs).resolve()
            extra = {"promoted": bool(result and result.promoted), "seconds": round(seconds[-1], 1)}
            if result is not None:
                candidate = point(g, result.model_dir)  # on the unseen dialogues too, like the curves
                extra.update(
                    kept=result.records,
                    reason=result.reason,
                    candidate_ppl=candidate["heldout_ppl"],
                    candidate_distinct_2=candidate["distinct_2"],
                )
            ours.append(point(g, served, **extra))

        prompts = [r.dialogue.first_user_text for r in iter_sources(root / "data") if r.origin == "human"]
        current = start.resolve()
        for g in range(1, args.generations + 1):
            number = 1000 + g
            data = seed_generation(engine, current, prompts, args.samples, g, runs / "seedway" / f"{g:04d}.jsonl")
            train_cfg = engine.retrain.config(number, current, data, {"hamdam.bench": "seed-way"})
            train(train_cfg)
            current = Path(train_cfg.export_dir).resolve()
            seeds.append(point(g, current))
        store.close()

        human_d2 = diversity.human.distinct_2
        human_words = diversity.human.mean_words
        curves = {"ours": ours, "seed": seeds}
        summary = {
            "generations": args.generations, "samples": args.samples, "start": str(args.start), "machine": machine(),
            "human_distinct_2": human_d2, "human_mean_words": human_words, "unseen_dialogues": len(meter.dialogues),
            "ours": ours, "seed": seeds,
            "ours_round_seconds_median": statistics.median(seconds) if seconds else None,
            "ours_ppl_change": ours[-1]["heldout_ppl"] / origin["heldout_ppl"] - 1,
            "ours_distinct_2_vs_human": ours[-1]["distinct_2"] / human_d2 - 1,
            "seed_ppl_change": seeds[-1]["heldout_ppl"] / origin["heldout_ppl"] - 1,
            "seed_distinct_2_vs_human": seeds[-1]["distinct_2"] / human_d2 - 1,
        }  # fmt: skip
        plot(curves, human_d2, args.png)
        summary["png"] = str(args.png)
        summary["mlflow_run"] = log_mlflow(args.tracking_uri, curves, summary, args.png)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    print(f"collapse study: {args.generations} generations of {args.samples} samples from {args.start}")
    print(f"machine: {summary['machine']}; measured on {summary['unseen_dialogues']} held-out dialogues the gate "
          f"never sees; human replies there: distinct-2 {human_d2:.3f}, {human_words:.1f} words")  # fmt: skip
    print(
        f"{'gen':>3}  {'ours ppl':>9} {'d-2':>6} {'words':>5} {'round':<9} {'kept':>4} {'s':>5}   "
        f"{'seed ppl':>9} {'d-2':>6} {'words':>5}"
    )
    for o, s in zip(ours, seeds, strict=True):
        state = "" if o["generation"] == 0 else ("promoted" if o.get("promoted") else "rejected")
        print(f"{o['generation']:>3}  {o['heldout_ppl']:>9.2f} {o['distinct_2']:>6.3f} {o['mean_words']:>5.1f} "
              f"{state:<9} {o.get('kept', ''):>4} {o.get('seconds', ''):>5}   {s['heldout_ppl']:>9.2f} "
              f"{s['distinct_2']:>6.3f} {s['mean_words']:>5.1f}")  # fmt: skip
    print(f"ours: held-out perplexity {summary['ours_ppl_change']:+.1%} from generation 0 (goal <= +1%), distinct-2 "
          f"{summary['ours_distinct_2_vs_human']:+.1%} against the human replies' (goal within 5%)")  # fmt: skip
    print(
        f"seed: held-out perplexity {summary['seed_ppl_change']:+.1%}, distinct-2 "
        f"{summary['seed_distinct_2_vs_human']:+.1%} against the human replies'"
    )
    print(f"median seconds per round (ours, {args.samples} samples): {summary['ours_round_seconds_median']:.1f}")
    print(f"plot: {args.png}; MLflow run {summary['mlflow_run']} ({args.tracking_uri}, experiment hamdam-bench)")


if __name__ == "__main__":
    main()

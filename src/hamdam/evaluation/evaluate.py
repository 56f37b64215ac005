"""``hamdam evaluate`` (the DVC stage ``evaluate``): perplexity and generation metrics on the eval set.

Writes ``metrics.json`` (for ``dvc metrics``), ``samples.jsonl`` (prompts and replies, for a person
to read), and the training run's loss curves as CSV (for ``dvc plots``), and logs the same numbers
as ``heldout/*`` metrics in the MLflow run that trained the model (the names training uses for the
same set: ``heldout/loss``, ``heldout/ppl``, then the generation figures).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from transformers import GenerationConfig, set_seed

from hamdam.data.chat_format import ChatFormat
from hamdam.data.records import load_dialogues
from hamdam.evaluation.metrics import generation_metrics
from hamdam.evaluation.perplexity import perplexity
from hamdam.evaluation.persona import AddressLexicon, persona_consistency
from hamdam.io import write_atomic_text
from hamdam.models.export import load_exported
from hamdam.models.generation import Generator
from hamdam.persona.card import RELATIONS, corpus_addresses

log = logging.getLogger(__name__)


def generate_replies(
    generator: Generator, prompts: list[str], batch_size: int, headers: list[list[int]] | None = None
) -> tuple[list[str], list[bool]]:
    """Replies to single-turn prompts (each after its persona header, if given), in batches; and
    whether each ended by itself."""
    chat_format = generator.chat_format
    headers = headers or [[] for _ in prompts]
    replies, clean = [], []
    for start in range(0, len(prompts), batch_size):
        encoded = [
            chat_format.encode_prompt([], p, generator.prompt_budget, h)
            for p, h in zip(prompts[start : start + batch_size], headers[start : start + batch_size], strict=True)
        ]
        for row in generator.generate(encoded):
            replies.append(chat_format.decode_reply(row))
            clean.append(generator.ended(row))
    return replies, clean


def training_run_id(tracking_uri: str, model_dir: Path) -> str | None:
    """The newest MLflow run that wrote ``model_dir`` (tagged hamdam.model_dir by training)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments,
        filter_string=f"tags.`hamdam.model_dir` = '{Path(model_dir).resolve()}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def loss_curves(tracking_uri: str, run_id: str | None) -> dict[str, str]:
    """CSV text of the training run's loss histories, keyed by file name."""
    if not run_id:
        return {}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    curves = {}
    for metric, name in (("train/loss_step", "train_loss.csv"), ("val/loss", "val_loss.csv")):
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["step", "loss"])
        for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step):
            writer.writerow([m.step, f"{m.value:.6f}"])
        curves[name] = out.getvalue()
    return curves


# metrics.json keys (DVC's, kept stable) -> their names under heldout/ in MLflow.
MLFLOW_NAMES = {"eval_loss": "loss", "eval_perplexity": "ppl", "eval_pairs": "dialogues"}
TITLES = {"train_loss.csv": "training loss per step", "val_loss.csv": "validation loss per epoch"}


def write_png(csv_text: str, title: str, path: Path) -> None:
    """The curve as a PNG, so it renders offline (``dvc plots show`` fetches its renderer from the
    internet); no timestamp or version in the file, so the same curve gives the same bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = list(csv.reader(io.StringIO(csv_text)))[1:]
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    axes.plot([int(r[0]) for r in rows], [float(r[1]) for r in rows], marker="." if len(rows) < 30 else None)
    axes.set(title=title, xlabel="step", ylabel="loss")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(temporary, format="png", metadata={"Software": None})
    temporary.replace(path)


def persona_labels(cfg: DictConfig) -> list[tuple[str, str] | None]:
    """(persona, listener) of each eval record where a reader could tell both, else None
    (``persona_labels``: one line per eval record, in order); [] without the file."""
    if not cfg.get("persona_labels") or not Path(cfg.persona_labels).is_file():
        return []
    rows = [json.loads(line) for line in Path(cfg.persona_labels).read_text(encoding="utf-8").splitlines()]
    return [(r["persona"], r["listener"]) if "unknown" not in (r["persona"], r["listener"]) else None for r in rows]


class PersonaReference:
    """The corpus's persona file (``persona_lexicon``), read once where a persona figure needs it: its
    forms of address for headers, its lexicon for the metric."""

    def __init__(self, path: str | Path):
        self.path = path

    @cached_property
    def forms(self) -> dict[tuple[str, str], tuple[str, ...]]:
        return corpus_addresses(self.path)

    @cached_property
    def lexicon(self) -> AddressLexicon:
        return AddressLexicon.from_personas(self.path)

    def header(self, chat_format: ChatFormat, persona: str, listener: str) -> list[int]:
        """The header with the pair given and the corpus's forms of address for it, as a card gives them."""
        return chat_format.header(persona, listener, self.forms.get((persona, listener), ()))


def persona_metrics(
    reference: PersonaReference, replies: list[str], labels: list[tuple[str, str] | None]
) -> dict[str, float]:
    """Persona consistency of the replies, against the labeled listener of each (read by a person,
    not by the metric)."""
    listeners = [pair[1] if pair else None for pair in labels[: len(replies)]]
    result = persona_consistency(reference.lexicon, replies, listeners)
    return {"persona_consistency": result.consistency, "persona_addressed": result.addressed,
            "persona_scored": result.replies}  # fmt: skip


def persona_prompt_metrics(
    cfg: DictConfig, generator: Generator, reference: PersonaReference
) -> tuple[dict[str, float], list[dict]]:
    """Persona consistency on prompts written apart from the corpus and the metric
    (``persona_prompts``: a persona, a listener and a user's message each), answered twice: with the
    pair and its forms of address in the header (as with a persona card), and with the relation
    only (as when it is read from the user's words), where either listener of that relation fits."""
    if not cfg.get("persona_prompts") or not Path(cfg.persona_prompts).is_file():
        return {}, []
    rows = [json.loads(line) for line in Path(cfg.persona_prompts).read_text(encoding="utf-8").splitlines() if line]
    chat_format = generator.chat_format
    prompts = [r["prompt"] for r in rows]
    given = [reference.header(chat_format, r["persona"], r["listener"]) for r in rows]
    relation_only = [chat_format.header(r["persona"]) for r in rows]
    with_pair, _ = generate_replies(generator, prompts, cfg.batch_size, given)
    with_relation, _ = generate_replies(generator, prompts, cfg.batch_size, relation_only)
    pair = persona_consistency(reference.lexicon, with_pair, [r["listener"] for r in rows])
    relation = persona_consistency(reference.lexicon, with_relation, [RELATIONS[r["persona"]] for r in rows])
    metrics = {
        "persona_prompts_consistency": pair.consistency,
        "persona_prompts_addressed": pair.addressed,
        "persona_prompts_relation_only": relation.consistency,
        "persona_prompts_scored": pair.replies,
    }
    samples = [
        {**r, "reply": a, "reply_relation_only": b} for r, a, b in zip(rows, with_pair, with_relation, strict=True)
    ]
    return metrics, samples


def output_dir(cfg: DictConfig) -> Path:
    """``out_dir``, else where the model's own results belong: ``pipeline/`` (DVC-tracked) for the
    pipeline's model only, ``<run>/eval/`` beside any other model, so evaluating another model never
    overwrites the pipeline's metrics."""
    if cfg.get("out_dir"):
        return Path(cfg.out_dir)
    model_dir = Path(cfg.model_dir).resolve()
    pipeline = (Path(cfg.paths.root_dir) / "pipeline").resolve()
    return pipeline if model_dir == pipeline / "model" else model_dir.parent / "eval"


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    set_seed(cfg.seed)
    exported = load_exported(cfg.model_dir)
    model, chat_format = exported.model, exported.chat_format
    dialogues = load_dialogues(cfg.eval_path)

    metrics: dict[str, Any] = {}
    ppl = perplexity(model, chat_format, dialogues, cfg.batch_size)
    metrics.update({"eval_loss": ppl.loss, "eval_perplexity": ppl.perplexity})

    generation: GenerationConfig = instantiate(cfg.generation)
    generation.max_new_tokens = cfg.max_new_tokens
    subset = dialogues[: cfg.num_generate] if cfg.num_generate else dialogues
    prompts = [d.first_user_text for d in subset]
    # Persona consistency is measured "with the relation given": the labeled pair in the header.
    labels = persona_labels(cfg)[: len(subset)]
    reference = PersonaReference(cfg.persona_lexicon)
    headers = [reference.header(chat_format, *pair) if pair else [] for pair in labels] if labels else None
    generator = Generator(model, chat_format, generation)
    replies, clean = generate_replies(generator, prompts, cfg.batch_size, headers)
    metrics.update(generation_metrics(replies, clean, cfg.script))
    metrics["eval_pairs"] = len(dialogues)
    metrics["generated"] = len(replies)
    if labels:
        metrics.update(persona_metrics(reference, replies, labels))
    persona_prompts, persona_samples = persona_prompt_metrics(cfg, generator, reference)
    metrics.update(persona_prompts)

    out = output_dir(cfg)
    write_atomic_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    samples = "".join(
        json.dumps({"prompt": p, "reply": r, "ended_cleanly": c}, ensure_ascii=False) + "\n"
        for p, r, c in zip(prompts, replies, clean, strict=True)
    )
    write_atomic_text(out / "samples.jsonl", samples)
    if persona_samples:
        text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in persona_samples)
        write_atomic_text(out / "persona_samples.jsonl", text)
    run_id = training_run_id(cfg.tracking_uri, Path(cfg.model_dir))
    for name, text in loss_curves(cfg.tracking_uri, run_id).items():
        write_atomic_text(out / "plots" / name, text)
        write_png(text, TITLES[name], out / "plots" / name.replace(".csv", ".png"))
    if run_id:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=cfg.tracking_uri)
        for key, value in metrics.items():
            client.log_metric(run_id, "heldout/" + MLFLOW_NAMES.get(key, key), float(value))
        client.log_artifact(run_id, str(out / "metrics.json"), artifact_path="eval")
        client.log_artifact(run_id, str(out / "samples.jsonl"), artifact_path="eval")
        for png in sorted((out / "plots").glob("*.png")):
            client.log_artifact(run_id, str(png), artifact_path="eval/plots")
    log.info("evaluate: %s", json.dumps(metrics))
    return metrics

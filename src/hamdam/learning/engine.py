"""The round engine: every change to what the served model knows is a round, whatever its kind.

    collect -> filter -> version      (rounds.RoundExporter: the store, data/, DVC, git)
    -> retrain                        (retrain.Retrainer: from the champion, with replay)
    -> gate                           (gate.Gate on gate.HeldoutMeter scores)
    -> promote -> record              (the champion pointer; the MLflow run and registry alias)

- A failed retrain leaves its rounds ``failed``; their records are trained on in the next cycle.
- One cycle at a time per workspace (a file lock): a round left running by a chat that was killed
  and the round a restarted chat asks for never train side by side. A cycle killed mid-training
  leaves its round ``versioned``; the next cycle marks the dead MLflow run KILLED and trains it.
- Each step's wall time is logged and recorded on the round's MLflow run (``round/<step>_s``): the
  profile of where a round's time goes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from hydra.utils import instantiate
from omegaconf import DictConfig

from hamdam.learning.champion import champion_dir, serve
from hamdam.learning.gate import Decision, DiversityCheck, Gate, HeldoutMeter, Scores
from hamdam.learning.retrain import Retrainer, RoundData
from hamdam.learning.rounds import DataVersioner, GeneratedSamples, RoundExporter, RoundFilter
from hamdam.learning.store import TO_TRAIN, ChatStore, Diversity, RoundRow, RoundStatus

if TYPE_CHECKING:
    from hamdam.selfgen.diversity import DiversityMeter

log = logging.getLogger(__name__)

REGISTERED_MODEL = "hamdam-companion"


@dataclass(frozen=True)
class RoundResult:
    round: int
    kind: str
    records: int
    replay: int
    ppl_before: float
    ppl_after: float
    promoted: bool
    reason: str
    model_dir: Path
    mlflow_run_id: str | None
    seconds: dict[str, float]
    generated_share: float = 0.0
    diversity: Diversity | None = None  # the candidate's, when the round was gated on diversity
    report: dict[str, int] | None = None  # what a generated round's filters dropped


class RoundEngine:
    """Built once per process from the learn config and a round train template; ``run`` per round.

    ``collector`` (a config with ``_target_``) makes the new rounds: by default
    ``learning.collector`` (chat turns); ``hamdam selfgen`` passes its generator, and a
    ``DiversityMeter`` that adds the collapse measures to the gate.
    """

    def __init__(
        self,
        cfg: DictConfig,
        template: DictConfig,
        collector: DictConfig | None = None,
        diversity: DiversityMeter | None = None,
    ):
        learning = cfg.learning
        self.runs_dir = Path(cfg.paths.runs_dir)
        self.tracking_uri = template.logger.get("tracking_uri") if template.get("logger") else None
        safety = instantiate(cfg.safety.detector) if cfg.get("safety") and cfg.safety.enabled else None
        chat = instantiate(learning.collector)
        if collector is None:
            self.collector = chat
        elif "safety" in collector:  # one detector per process: the collector screens with the engine's
            self.collector = instantiate(collector, _partial_=True)(safety=safety)
        else:
            self.collector = instantiate(collector)
        generated = GeneratedSamples()
        self.readers = {chat.kind: chat, generated.kind: generated}  # to finish what a crash left half-way
        self.select = RoundFilter(instantiate(learning.quality), safety)
        self.version = DataVersioner(Path(cfg.paths.root_dir))
        self.retrain = Retrainer(template, learning.epochs, learning.replay_ratio, learning.heldout, learning.validate,
                                 learning.max_generated_share)  # fmt: skip
        self.meter = HeldoutMeter(learning.heldout, learning.heldout_size, learning.heldout_batch_size)
        self.diversity = diversity
        self.gate = Gate(learning.tolerance, learning.max_drift, learning.min_distinct2)
        self.store_path = learning.store
        self.seconds: dict[str, float] = {}

    def prepare(self) -> None:
        """Measure the served model now, while the user is still chatting, so that the first round
        does not wait for it (the figure is kept; later champions are measured at their own gate)."""
        store = ChatStore(self.store_path)
        try:
            self.meter.score(store, champion_dir(self.runs_dir).resolve())
        finally:
            store.close()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def run(self, up_to: int | None = None, parent_run: str | None = None) -> RoundResult | None:
        """A round over the material collected up to ``up_to`` (with any round a crash or failure
        left untrained); None when there is nothing to learn."""
        (self.runs_dir / "rounds").mkdir(parents=True, exist_ok=True)
        with FileLock(self.runs_dir / "rounds" / "learn.lock"):
            store = ChatStore(self.store_path)
            try:
                return self._run(store, up_to, parent_run)
            finally:
                store.close()

    def _run(self, store: ChatStore, up_to: int | None, parent_run: str | None) -> RoundResult | None:
        self.seconds = {}
        exporter = RoundExporter(store, self.collector, self.select, self.version, self.readers)
        with self.step("collect_filter_version"):
            exporter.resume()
            exporter.export(up_to)
        pending = store.rounds(*TO_TRAIN)
        if not pending:
            return None
        number = pending[-1].number
        if not any(r.records for r in pending):  # all filtered out: a version, but nothing to learn
            store.set_status([r.number for r in pending], RoundStatus.EMPTY)
            log.info("round %d: no record passed the filters; nothing to train", number)
            return None
        base = champion_dir(self.runs_dir).resolve()
        with self.step("replay"):
            # Model-written samples that made a worse model are not fed back in by later rounds.
            turned_down = {r.source for r in store.rounds(RoundStatus.REJECTED) if r.kind == "generated"}
            data = self.retrain.data(number, [r.source for r in pending], turned_down, store.retired_cards())
        tags = {"hamdam.round": str(number), "hamdam.round_kind": pending[-1].kind}
        if parent_run:
            tags["mlflow.parentRunId"] = parent_run
        train_cfg = self.retrain.config(number, base, data.path, tags)
        with self.step("retrain"):
            self._close_dead_runs([r.number for r in pending])
            try:
                self.retrain(train_cfg)
            except Exception:
                store.set_status([r.number for r in pending], RoundStatus.FAILED)
                raise
        candidate = Path(train_cfg.export_dir).resolve()
        reference = Path(store.reference_model() or base)
        with self.step("gate"):
            scores = Scores(
                candidate=self.meter.score(store, candidate),
                champion=self.meter.score(store, base),
                reference=self.meter.score(store, reference),
            )
            diversity = None
            if self.diversity is not None:
                diversity = DiversityCheck(
                    candidate=self.diversity.score(store, candidate),
                    human=self.diversity.human,
                    reference=self.diversity.score(store, reference),
                )
            decision = self.gate.decide(scores, diversity)
        status = RoundStatus.PROMOTED if decision.promoted else RoundStatus.REJECTED
        before, after = scores.champion.perplexity, scores.candidate.perplexity
        report = _report(pending)
        with self.step("record"):
            run_id = self._record(pending, candidate, data, scores, decision, diversity, report)
        with self.step("promote"):
            if decision.promoted:
                serve(self.runs_dir, candidate, {"round": number})
            store.record_training([r.number for r in pending], status, str(base), str(candidate), before, after)
        log.info(
            "round %d: held-out perplexity %.2f -> %.2f, %s (%s); seconds: %s",
            number, before, after, status, decision.reason, ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
        )  # fmt: skip
        return RoundResult(number, pending[-1].kind, data.records, data.replay, before, after, decision.promoted,
                           decision.reason, candidate, run_id, dict(self.seconds), data.generated_share,
                           diversity.candidate if diversity else None, report)  # fmt: skip

    def _close_dead_runs(self, numbers: list[int]) -> None:
        """Runs of these rounds still RUNNING belong to a cycle that was killed (we hold the lock): KILLED."""
        if not self.tracking_uri:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        if not experiments:
            return
        for number in numbers:
            query = f"tags.`hamdam.round` = '{number}' and attributes.status = 'RUNNING'"
            for run in client.search_runs(experiments, query):
                client.set_tag(
                    run.info.run_id, "hamdam.error", "the learning cycle was killed; the round was trained again"
                )
                client.set_terminated(run.info.run_id, "KILLED")
                log.warning("round %d: MLflow run %s was left running by a killed cycle; marked KILLED", number,
                            run.info.run_id)  # fmt: skip

    def _record(
        self,
        pending: list[RoundRow],
        model_dir: Path,
        data: RoundData,
        scores: Scores,
        decision: Decision,
        diversity: DiversityCheck | None = None,
        report: dict[str, int] | None = None,
    ) -> str | None:
        """Round params, gate metrics and step times on the training run; the registry alias on promotion."""
        if not self.tracking_uri:
            return None
        from mlflow.tracking import MlflowClient

        from hamdam.evaluation.evaluate import training_run_id

        run_id = training_run_id(self.tracking_uri, model_dir)
        if run_id is None:
            return None
        client = MlflowClient(tracking_uri=self.tracking_uri)
        last = pending[-1]
        params = {
            "round": last.number,
            "round_kind": last.kind,
            "round_records": data.records,
            "replay_records": data.replay,
            "rounds_trained": ",".join(str(r.number) for r in pending),
        }
        for key, value in params.items():
            client.log_param(run_id, f"learning.{key}", value)
        if last.data_md5:
            client.set_tag(run_id, "hamdam.round_data_md5", last.data_md5)
        metrics = {
            # The gate's subset (learning.heldout_size); heldout/* (the whole set) is the training's.
            "gate/ppl_before": scores.champion.perplexity,
            "gate/ppl_after": scores.candidate.perplexity,
            "gate/ppl_after_low": scores.candidate.low,
            "gate/ppl_after_high": scores.candidate.high,
            "gate/ppl_reference": scores.reference.perplexity,
            "round/generated_share": data.generated_share,
            **{f"round/{k}_s": v for k, v in self.seconds.items()},
            **{f"filter/{k}": v for k, v in (report or {}).items()},
        }
        if diversity is not None:
            for name, value in (("candidate", diversity.candidate), ("human", diversity.human),
                                ("reference", diversity.reference)):  # fmt: skip
                metrics[f"diversity/{name}_distinct_1"] = value.distinct_1
                metrics[f"diversity/{name}_distinct_2"] = value.distinct_2
                metrics[f"diversity/{name}_mean_words"] = value.mean_words
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        for row in pending:
            if row.kind == "generated":  # the kept samples, as versioned in data/
                client.log_artifact(run_id, str(self.version.root / "data" / row.source), artifact_path="samples")
        client.set_tag(run_id, "hamdam.promoted", str(decision.promoted).lower())
        client.set_tag(run_id, "hamdam.gate", decision.reason)
        if decision.promoted:
            if not client.search_registered_models(filter_string=f"name = '{REGISTERED_MODEL}'"):
                client.create_registered_model(REGISTERED_MODEL)
            version = client.create_model_version(REGISTERED_MODEL, source=f"runs:/{run_id}/model", run_id=run_id)
            client.set_registered_model_alias(REGISTERED_MODEL, "champion", version.version)
        return run_id


def _report(pending: list[RoundRow]) -> dict[str, int] | None:
    """The filter reports of the rounds trained together, summed."""
    total: dict[str, int] = {}
    for row in pending:
        for key, value in json.loads(row.report or "{}").items():
            total[key] = total.get(key, 0) + value
    return total or None


def learn(cfg: DictConfig) -> None:
    """``hamdam learn``: one round now, printed as JSON."""
    import sys

    from hamdam.learning.retrain import template

    result = RoundEngine(cfg, template(cfg)).run(cfg.get("up_to_turn"), cfg.get("parent_run"))
    payload = {"round": None} if result is None else {**asdict(result), "model_dir": str(result.model_dir)}
    sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")

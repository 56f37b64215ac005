"""``hamdam selfgen [--forever]``: one self-generated round, or the seed's loop of them.

The loop is a well-behaved long-running process:

- one loop per workspace (``runs/rounds/selfgen.lock``), and each cycle holds the round engine's
  lock, so it runs beside ``hamdam chat --learn`` and never trains at the same time as it;
- SIGTERM between cycles ends it at once; during a cycle, the cycle finishes (or, if the signal
  arrives while the model trains, Lightning stops training and the round stays ``versioned``: the
  next start trains it). SIGKILL anywhere loses nothing the chat store or data/ committed: the next
  start resumes the round where it was;
- one progress line per cycle on stdout; its MLflow run (kind ``selfgen-loop``) is the parent of
  every round's run, and a loop run left RUNNING by a killed loop is marked KILLED on the next start.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

from filelock import FileLock, Timeout
from hydra.utils import instantiate
from omegaconf import DictConfig

from hamdam.errors import HamdamError
from hamdam.learning.engine import RoundEngine, RoundResult
from hamdam.learning.retrain import template
from hamdam.training.tracking import ROUNDS_EXPERIMENT, close_dead_runs, experiment_id, owner_tags

log = logging.getLogger(__name__)

LOOP_KIND = "selfgen-loop"


def generated_records(data_dir: Path) -> int:
    """Records under data/generated/ now (after a rollback, fewer than the rounds ever wrote)."""
    folder = Path(data_dir) / "generated"
    if not folder.is_dir():
        return 0
    return sum(sum(1 for line in p.read_text(encoding="utf-8").splitlines() if line.strip())
               for p in folder.glob("*.jsonl"))  # fmt: skip


class LoopRun:
    """The loop's MLflow run: the parent of each round's run; closed FINISHED, FAILED or KILLED."""

    def __init__(self, tracking_uri: str | None, cfg: DictConfig):
        self.client = None
        self.run_id: str | None = None
        if not tracking_uri:
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = experiment_id(self.client, ROUNDS_EXPERIMENT, cfg.get("artifact_location"))
        self._close_dead(experiment)
        close_dead_runs(self.client)
        name = f"selfgen-{time.strftime('%Y%m%d-%H%M%S')}"
        run = self.client.create_run(experiment, run_name=name, tags={"hamdam.kind": LOOP_KIND, **owner_tags()})
        self.run_id = run.info.run_id
        settings = cfg.selfgen
        for key in ("forever", "interval_s", "samples", "cap", "max_generated_share", "max_rejections"):
            self.client.log_param(self.run_id, f"selfgen.{key}", settings[key])
        for key in ("model_prompt_share", "max_rouge_l", "near_duplicate", "band"):
            self.client.log_param(self.run_id, f"selfgen.collector.{key}", settings.collector[key])

    def _close_dead(self, experiment_id: str) -> None:
        """We hold the loop lock: any other loop run still RUNNING belongs to a killed process."""
        query = f"tags.`hamdam.kind` = '{LOOP_KIND}' and attributes.status = 'RUNNING'"
        for run in self.client.search_runs([experiment_id], query):
            self.client.set_tag(run.info.run_id, "hamdam.error", "the loop was killed")
            self.client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow run %s of a killed selfgen loop marked KILLED", run.info.run_id)

    def cycle(self, step: int, result: RoundResult | None, generated: int) -> None:
        if self.client is None:
            return
        metrics = {"loop/generated_records": generated, "loop/round": result.round if result else 0}
        if result is not None:
            metrics.update({"loop/promoted": float(result.promoted), "loop/ppl_after": result.ppl_after})
            if result.diversity is not None:
                metrics["loop/distinct_2"] = result.diversity.distinct_2
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def close(self, status: str) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status)


def progress(step: int, result: RoundResult | None, generated: int, cap: int, seconds: float) -> str:
    """The cycle's one line: what was generated and kept, the gate's figures, its decision, the total."""
    if result is None:
        return f"cycle {step}: no sample passed the filters; generated data {generated}/{cap}; {seconds:.0f} s"
    report = result.report or {}
    dropped = ", ".join(
        f"{k} {v}" for k, v in sorted(report.items()) if k not in ("candidates", "kept", "model_prompts")
    )
    diversity = f", distinct-2 {result.diversity.distinct_2:.3f}" if result.diversity else ""
    verdict = "promoted" if result.promoted else "rejected"
    return (
        f"cycle {step}: round {result.round} ({result.kind}) kept {report.get('kept', result.records)} of "
        f"{report.get('candidates', '?')} candidates (dropped: {dropped or 'none'}); held-out perplexity "
        f"{result.ppl_before:.2f} -> {result.ppl_after:.2f}{diversity}; {verdict}: {result.reason}; "
        f"generated data {generated}/{cap}; {seconds:.0f} s"
    )


class StopSignal:
    """SIGTERM (and SIGINT between cycles) asks the loop to stop; ``wait`` sleeps until then."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.previous = {}

    def __enter__(self) -> StopSignal:
        self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        log.warning("SIGTERM: the loop stops after the current step")
        self.event.set()

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; True if asked to stop meanwhile (at once if already asked)."""
        try:
            return self.event.wait(seconds)
        except KeyboardInterrupt:
            self.event.set()
            return True


def selfgen(cfg: DictConfig) -> None:
    """``hamdam selfgen``: one round; ``hamdam selfgen --forever``: rounds every interval until the cap."""
    settings = cfg.selfgen
    runs_dir = Path(cfg.paths.runs_dir)
    (runs_dir / "rounds").mkdir(parents=True, exist_ok=True)
    lock = FileLock(runs_dir / "rounds" / "selfgen.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise HamdamError(
            f"Another `hamdam selfgen` is running in this workspace ({runs_dir / 'rounds' / 'selfgen.lock'} is "
            "held). Stop it first (SIGTERM lets it finish its step), or run this one in another workspace."
        ) from None
    try:
        _loop(cfg, settings, runs_dir)
    finally:
        lock.release()


def _loop(cfg: DictConfig, settings: DictConfig, runs_dir: Path) -> None:
    data_dir = Path(cfg.paths.root_dir) / "data"
    engine = RoundEngine(cfg, template(cfg), settings.collector, instantiate(settings.diversity))
    loop_run = LoopRun(cfg.get("tracking_uri"), cfg)
    status = "FAILED"
    rejections, step = 0, 0
    with StopSignal() as stop:
        try:
            while not stop.event.is_set():
                generated = generated_records(data_dir)
                if generated >= settings.cap:
                    _say(f"generated data {generated}/{settings.cap}: the cap is reached; the loop stops")
                    break
                step += 1
                start = time.perf_counter()
                result = engine.run(parent_run=loop_run.run_id)
                generated = generated_records(data_dir)
                loop_run.cycle(step, result, generated)
                _say(progress(step, result, generated, settings.cap, time.perf_counter() - start))
                if not settings.forever:
                    break
                rejections = 0 if result is not None and result.promoted else rejections + 1
                wait = float(settings.interval_s)
                if rejections >= settings.max_rejections:
                    wait = min(wait * settings.backoff_factor ** (rejections - settings.max_rejections + 1),
                               float(settings.max_backoff_s))  # fmt: skip
                    why = result.reason if result is not None else "no sample passed the filters"
                    rounds = f"{rejections} round{'s' * (rejections != 1)}"
                    _say(f"{rounds} in a row not promoted (last: {why}); backing off: next cycle in {wait:.0f} s")
                if stop.wait(wait):
                    break
            status = "FINISHED"
        finally:  # SIGTERM while training ends the process through Lightning: KILLED as well
            loop_run.close("KILLED" if stop.event.is_set() else status)
    if stop.event.is_set():
        _say("stopped by SIGTERM; nothing is lost: the next start carries on")


def _say(line: str) -> None:
    """A progress line for the person running the loop (stdout, flushed: it may be piped to a log)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()

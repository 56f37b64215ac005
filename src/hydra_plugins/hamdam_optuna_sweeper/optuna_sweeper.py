"""A Hydra sweeper that searches with Optuna: ``hamdam train -m hparams_search=smoke_optuna``.

Why our own: Hydra's Optuna sweeper plugin (hydra-optuna-sweeper 1.3) pins ``optuna<3``; pip puts
optuna 2.10 beside MLflow 3's SQLAlchemy 2, whose storage then fails on its first query, so a study
cannot be kept in a database and resumed. This one drives the current Optuna behind the same config
shape (``direction``, ``n_trials``, ``n_jobs``, ``sampler``, ``storage``, ``study_name`` and
``params`` in Hydra's sweep syntax: ``interval(a, b)``, ``tag(log, interval(a, b))``,
``choice(...)``, ``range(...)``), so a lightning-hydra-template search config reads the same.

What it adds for hamdam:

- the objective is a key of the metrics each job returns (``objective``: ``heldout/ppl``);
- the study is an MLflow run in the "sweeps" experiment, and every trial's training run is nested
  under it (``parent_run``); the best trial's parameters and value are logged to it at the end;
- the study lives in ``storage`` (SQLite): running the same command again resumes it, running only
  the trials still missing from ``n_trials`` (a failed or killed trial is run again).
"""

# No `from __future__ import annotations`: Hydra loads plugin modules without registering them,
# and the config dataclass below needs its annotations evaluated (OmegaConf reads them).
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035 (OmegaConf reads these annotations)

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.hamdam_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    objective: str = "heldout/ppl"
    direction: str = "minimize"
    study_name: Optional[str] = None  # noqa: UP045 (OmegaConf reads these annotations)
    storage: Optional[str] = None  # noqa: UP045
    n_trials: int = 20
    n_jobs: int = 1
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0})
    params: Dict[str, str] = field(default_factory=dict)  # noqa: UP006
    # The study's storage; null: sqlite:///<paths.root_dir>/optuna.db.
    # The MLflow store of the study's run; null: the trials' own (logger.tracking_uri).
    tracking_uri: Optional[str] = None  # noqa: UP045
    experiment_name: str = "sweeps"


ConfigStore.instance().store(group="hydra/sweeper", name="hamdam_optuna", node=OptunaSweeperConf, provider="hamdam")


def distribution(override: Override) -> Any:
    """The Optuna distribution of one ``params`` entry."""
    import optuna

    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return optuna.distributions.IntDistribution(value.start, value.end, log=log_scale)
        return optuna.distributions.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(
        f"hydra.sweeper.params.{key}: '{override.input_line}' is not a search space. Use interval(low, high), "
        "tag(log, interval(low, high)), choice(a, b, ...) or range(start, stop)."
    )


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        objective: str,
        direction: str,
        study_name: str | None,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        sampler: Any,
        params: dict[str, str],
        tracking_uri: str | None = None,
        experiment_name: str = "sweeps",
    ):
        self.objective = objective
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = int(n_trials)
        self.n_jobs = max(int(n_jobs), 1)
        self.sampler = sampler
        self.params = dict(params or {})
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _workspace_defaults(self) -> None:
        """``storage`` and ``tracking_uri`` left null: the workspace's, read from the sweep's config
        now that Hydra's runtime values (``paths.root_dir``) exist (the sweeper is built before)."""
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(self.config)
        if self.storage is None:
            self.storage = f"sqlite:///{Path(self.config.paths.root_dir) / 'optuna.db'}"
        if self.tracking_uri is None and self.config.get("logger") and "_target_" in self.config.logger:
            self.tracking_uri = self.config.logger.tracking_uri

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._workspace_defaults()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        fixed = parser.parse_overrides(arguments)
        if any(o.is_sweep_override() for o in fixed):
            swept = ", ".join(o.input_line for o in fixed if o.is_sweep_override())
            raise ValueError(f"A searched sweep takes its search space from hydra.sweeper.params, not from the "
                             f"command line ({swept}): put it in the hparams_search config.")  # fmt: skip
        space = {o.get_key_element(): distribution(o) for o in parser.parse_overrides(
            [f"{k}={v}" for k, v in self.params.items()])}  # fmt: skip
        # Hydra has built it already when it built this sweeper (its config has a _target_).
        sampler = instantiate(self.sampler) if isinstance(self.sampler, (dict, DictConfig)) else self.sampler
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=sampler,
            direction=self.direction,
            load_if_exists=True,
        )
        parent = self._parent_run(study)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if done:
            log.info("study %s resumed from %s: %d of %d trials done", study.study_name, self.storage, len(done),
                     self.n_trials)  # fmt: skip
        job = len(study.trials)
        returns = []
        while len(done) < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - len(done)))]
            batch = [
                tuple(
                    [o.input_line for o in fixed]
                    + [f"{key}={value}" for key, value in trial.params.items()]
                    + ([f"logger.parent_run={parent}"] if parent else [])
                )
                for trial in trials
            ]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=job)
            job += len(batch)
            for trial, result in zip(trials, results, strict=True):
                value = self._value(result)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    log.warning("trial %d failed (%s); it is not counted", trial.number, result.status.name)
                    continue
                study.tell(trial, value)
                done.append(trial)
                log.info("trial %d: %s = %.4f with %s", trial.number, self.objective, value, trial.params)
            returns.append(results)
        best = study.best_trial
        summary = {"name": "optuna", "objective": self.objective, "best_value": best.value,
                   "best_params": best.params, "best_trial": best.number, "trials": len(done)}  # fmt: skip
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / "optimization_results.yaml")
        log.info("best trial %d: %s = %.4f with %s", best.number, self.objective, best.value, best.params)
        self._close_parent(parent, study)
        return returns

    def _value(self, result: Any) -> float | None:
        """The objective from a job's returned metrics; None for a failed job or a missing value."""
        try:
            metrics = result.return_value
        except Exception:  # the job's exception: the trial failed
            return None
        value = (metrics or {}).get(self.objective) if isinstance(metrics, dict) else None
        return float(value) if value is not None and value == value else None

    def _parent_run(self, study: Any) -> str | None:
        """The study's MLflow run: created once, kept in the study, reused on resume."""
        if not self.tracking_uri:
            return None
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        known = study.user_attrs.get("mlflow_run")
        if known:
            client.update_run(known, status="RUNNING")
            return known
        experiment = client.get_experiment_by_name(self.experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment_name)
        run = client.create_run(experiment_id, run_name=f"study-{study.study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                tags={"hamdam.kind": "optuna-study", "hamdam.study": study.study_name})  # fmt: skip
        for key, value in {"objective": self.objective, "direction": self.direction, "n_trials": self.n_trials,
                           "sampler": type(study.sampler).__name__, **{f"space.{k}": v for k, v in self.params.items()}
                           }.items():  # fmt: skip
            client.log_param(run.info.run_id, key, value)
        study.set_user_attr("mlflow_run", run.info.run_id)
        return run.info.run_id

    def _close_parent(self, parent: str | None, study: Any) -> None:
        if parent is None:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        best = study.best_trial
        client.log_metric(parent, f"best/{self.objective}", best.value)
        client.set_tag(parent, "hamdam.best_trial", str(best.number))
        for key, value in best.params.items():
            client.set_tag(parent, f"best.{key}", str(value))
        client.set_terminated(parent, "FINISHED")

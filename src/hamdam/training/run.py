"""``hamdam train``: compose the objects the config names, fit, export, track.

Under torchrun or srun (``trainer=ddp``) every rank runs all of this: each builds the same data,
tokenizer and model (DDP checks that the shapes agree), and trains its shard; rank 0 alone writes the
run's files, opens the MLflow run, measures the held-out set and exports the model.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel
from transformers import AutoTokenizer

from hamdam.data.chat_format import ChatFormat, RoleMarkers
from hamdam.data.datamodule import DialogueDataModule
from hamdam.data.records import Dialogue, load_dialogues
from hamdam.errors import HamdamError
from hamdam.models.backbones import apply_lora
from hamdam.models.export import Exported, export_model, load_exported, write_latest
from hamdam.models.module import DialogueLM
from hamdam.models.tokenizers import looks_local
from hamdam.persona.card import corpus_addresses
from hamdam.training import tracking
from hamdam.training.callbacks import HeldoutPerplexity

log = logging.getLogger(__name__)


def find_checkpoint(cfg: DictConfig) -> Path | None:
    """``ckpt_path=last``: the newest ``last.ckpt`` of an earlier run of this model; or a given path.
    Either is read and checked against ``trainer.max_epochs`` before anything is built."""
    wanted = cfg.get("ckpt_path")
    if not wanted:
        return None
    if wanted != "last":
        path = Path(wanted)
        if not path.is_file():
            raise HamdamError(f"ckpt_path={wanted}: no such checkpoint file. Pass a .ckpt path or ckpt_path=last.")
        return check_resumable(path, cfg.trainer.get("max_epochs", -1))
    runs = Path(cfg.paths.runs_dir)
    here = Path(cfg.paths.output_dir).resolve()
    candidates = [
        p
        for p in runs.glob("**/checkpoints/last.ckpt")
        if p.parent.parent.resolve() != here and model_name_of(p.parent.parent) == cfg.model.name
    ]
    if not candidates:
        raise HamdamError(
            f"ckpt_path=last: no earlier run of model '{cfg.model.name}' with a checkpoint under "
            f"{runs}. Start a fresh run without ckpt_path, or pass ckpt_path=/path/to/last.ckpt."
        )
    return check_resumable(max(candidates, key=lambda p: p.stat().st_mtime), cfg.trainer.get("max_epochs", -1))


def check_resumable(path: Path, max_epochs: int) -> Path:
    """A checkpoint Lightning can resume under ``max_epochs``, or a clear error.

    ``trainer.max_epochs`` counts from the start of the first run, so a resumed run trains the
    epochs between the checkpoint and it: 10 epochs, killed after 4, resumed, trains 6 more."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        done = int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])  # saved at epoch end
    except Exception as err:  # truncated, not a zip, not a pickle, not Lightning's layout: all the same to the user
        raise HamdamError(
            f"ckpt_path: '{path}' cannot be read as a Lightning checkpoint ({type(err).__name__}: "
            f"{str(err)[:200]}). It may be truncated or not a .ckpt file; pass another checkpoint, or start "
            "a fresh run without ckpt_path."
        ) from err
    if max_epochs != -1 and done > max_epochs:
        raise HamdamError(
            f"ckpt_path: '{path}' has already trained {done} epochs, more than trainer.max_epochs={max_epochs}. "
            f"trainer.max_epochs counts from the first run's start: set trainer.max_epochs above {done} to "
            "train on from it, or start a fresh run without ckpt_path."
        )
    return path


def model_name_of(run_dir: Path) -> str | None:
    marker = run_dir / "model_name.txt"
    return marker.read_text(encoding="utf-8").strip() if marker.is_file() else None


def backbone_record(cfg: DictConfig) -> dict[str, Any] | None:
    """The backbone config saved beside an adapter, with local paths made absolute."""
    if cfg.model.get("lora") is None or "name_or_path" not in cfg.model.backbone:
        return None
    record = OmegaConf.to_container(cfg.model.backbone, resolve=True)
    record.pop("_partial_", None)
    if looks_local(record["name_or_path"]):
        record["name_or_path"] = str(Path(record["name_or_path"]).expanduser().resolve())
    return record


def continued_config(cfg: DictConfig, init: Exported) -> DictConfig:
    """The run's config with ``model`` describing the exported model it continues (its name, shape,
    adapter), not the config's model group, which a continued run does not build; the optimizer and
    scheduler are the config's, as they are what this run used. MLflow and resolved_config.yaml
    record this, so a round's run names the model it fine-tuned."""
    config = init.model.config
    shape = ("model_type", "n_layer", "n_head", "n_embd", "n_positions", "vocab_size")
    lora = None
    if isinstance(init.model, PeftModel):
        adapter = init.model.peft_config["default"]
        lora = {"r": adapter.r, "lora_alpha": adapter.lora_alpha, "lora_dropout": adapter.lora_dropout,
                "target_modules": adapter.target_modules if isinstance(adapter.target_modules, str)
                else sorted(adapter.target_modules or [])}  # fmt: skip
    model = OmegaConf.create({
        "name": init.meta.get("model_name", cfg.model.name),
        "kind": init.meta["kind"],
        "max_length": init.meta["max_length"],
        "backbone": init.meta.get("backbone") or {k: getattr(config, k) for k in shape if hasattr(config, k)},
        "lora": lora,
        "markers": init.meta["markers"],
    })  # fmt: skip
    model.optimizer = cfg.model.optimizer  # nodes, interpolations kept
    model.scheduler = cfg.model.get("scheduler")
    continued = cfg.copy()
    continued.model = model
    return continued


def load_heldout(cfg: DictConfig) -> list[Dialogue] | None:
    """The held-out set every run is measured on, read (and checked) before training starts."""
    path = (cfg.get("heldout") or {}).get("path")
    if not path:
        return None
    if not Path(path).is_file():
        log.warning("heldout.path %s does not exist: this run logs no heldout/* figures. Point heldout.path "
                    "at a held-out file, or set heldout.path=null to turn this off.", path)  # fmt: skip
        return None
    return load_dialogues(path)


def check_launch(trainer: L.Trainer) -> None:
    """Plain DDP or FSDP over several devices started as one command: Lightning would start the other
    ranks by re-running this process's command line, which ``hamdam``'s is not (its command word is
    gone from it), and the children would die at start. Say how to start it instead."""
    launcher = trainer.strategy.launcher
    if (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally  # torchrun, srun: they did
        and trainer.num_devices > 1
    ):
        name = getattr(trainer.strategy, "strategy_name", type(trainer.strategy).__name__)
        raise HamdamError(
            f"strategy {name} over {trainer.num_devices} devices needs one process per device, started by a "
            f"launcher: `torchrun --nproc_per_node {trainer.num_devices} -m hamdam train ...`, or srun under "
            "SLURM. To start DDP from this one command (a notebook), use trainer=ddp_spawn."
        )


def check_sharding(trainer: L.Trainer, network: torch.nn.Module) -> None:
    """FSDP flattens the weights of each wrapped block into one tensor; bitsandbytes' 4-bit weights, as
    hamdam loads them (uint8 storage, no ``bnb_4bit_quant_storage``), cannot be flattened with the rest."""
    if isinstance(trainer.strategy, FSDPStrategy) and any(type(m).__name__ == "Linear4bit" for m in network.modules()):
        raise HamdamError(
            "trainer=fsdp cannot shard a 4-bit (NF4) base model. Pass model.quantization=none (LoRA on the "
            "base in full or half precision, sharded), or train QLoRA with trainer=ddp (each GPU holds the "
            "whole 4-bit base)."
        )


def trained_network(
    trainer: L.Trainer, module: DialogueLM, rebuild: Callable[[], torch.nn.Module]
) -> torch.nn.Module | None:
    """The trained network to export, on rank 0 (None on the others). Under FSDP the module holds
    this rank's shards inside FSDP wrappers: every rank takes part in gathering the full weights,
    which rank 0 loads into a fresh, unwrapped copy built by ``rebuild``."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        return module.model if trainer.is_global_zero else None
    state = trainer.strategy.lightning_module_state_dict()  # a collective; the full dict on rank 0 only
    if not trainer.is_global_zero:
        return None
    network = rebuild()
    network.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return network


def drop_stray_run_dir(own: Path, run_dir: Path) -> None:
    """A rank's own run directory when it is not rank 0's (the run's): run_name's ``${now:...}`` is
    read as each rank starts, and a rank that started a second later named another folder. Every file
    of the run is rank 0's, so this one holds only that rank's Hydra files (``.hydra``, its log):
    removed, so that one run leaves one folder. Anything else in it is kept, with a warning."""
    if not own.is_dir() or own.resolve() == run_dir.resolve():
        return
    others = [p.name for p in own.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
    if others:
        log.warning("Run directory %s of this rank is not the run's (%s) and holds %s: left as it is",
                    own, run_dir, ", ".join(sorted(others)))  # fmt: skip
        return
    shutil.rmtree(own, ignore_errors=True)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train once; returns the final metrics (for sweeps), ``heldout/ppl`` among them."""
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    datamodule: DialogueDataModule = instantiate(cfg.data)  # bad data fails here, before any output
    heldout = load_heldout(cfg)  # and a bad held-out file
    checkpoint = find_checkpoint(cfg)  # and so does a checkpoint that cannot be resumed
    # Continue from an exported model (a learning round): its tokenizer, markers, weights, adapter.
    init = load_exported(cfg.init_from, trainable=True) if cfg.get("init_from") else None
    if init is not None:
        cfg = continued_config(cfg, init)
    markers: RoleMarkers = RoleMarkers(**init.meta["markers"]) if init else instantiate(cfg.model.markers)
    max_length = init.meta["max_length"] if init else cfg.model.max_length
    output_dir = Path(cfg.paths.output_dir)
    # rank_zero_only.rank: Lightning's, read from the launcher's environment (0 when there is none).
    writes = rank_zero_only.rank == 0  # the run's files are rank 0's (under torchrun, every rank gets here)
    if writes:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "model_name.txt").write_text(str(cfg.model.name), encoding="utf-8")
        (output_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    if cfg.model.get("bootstrap") is not None:
        instantiate(cfg.model.bootstrap)(texts=datamodule.train_texts())
    if init is not None:
        tokenizer = init.chat_format.tokenizer
        log.info("Continuing from %s", cfg.init_from)
    elif checkpoint is not None and (checkpoint.parent.parent / "tokenizer").is_dir():
        # Resuming: the ids must mean what they meant when the checkpoint was written.
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.parent.parent / "tokenizer")
        log.info("Resuming from %s", checkpoint)
    else:
        tokenizer = instantiate(cfg.model.tokenizer)(texts=datamodule.train_texts(), markers=markers)
    if writes:
        tokenizer.save_pretrained(output_dir / "tokenizer")
    chat_format = ChatFormat(tokenizer, markers, max_length)
    forms = cfg.model.get("persona_forms")
    if forms and Path(forms).is_file():  # the header's forms of address for records that give a pair
        chat_format.addresses = corpus_addresses(forms)
    datamodule.attach(chat_format)

    def build_network() -> torch.nn.Module:
        if init is not None:
            return load_exported(cfg.init_from, trainable=True).model
        built = instantiate(cfg.model.backbone)(tokenizer=tokenizer)
        return apply_lora(built, instantiate(cfg.model.lora)) if cfg.model.get("lora") is not None else built

    network = init.model if init is not None else build_network()
    network.train()  # from_pretrained leaves eval mode (no dropout); Lightning keeps the mode it finds
    module = DialogueLM(
        network,
        optimizer=instantiate(cfg.model.optimizer),
        scheduler=instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
    )

    logger = None
    if cfg.get("logger") and "_target_" in cfg.logger:  # logger=null leaves an experiment's keys behind
        logger = instantiate(cfg.logger, run_name=tracking.run_name(cfg), experiment_name=tracking.experiment_name(cfg))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    measured = None
    if heldout is not None:
        measured = HeldoutPerplexity(heldout, chat_format, int(cfg.heldout.batch_size), output_dir / "heldout.json")
        callbacks.append(measured)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger if logger else False, callbacks=callbacks)
    check_launch(trainer)
    check_sharding(trainer, network)
    if logger is not None:
        tags = {"hamdam.world_size": str(trainer.world_size)}
        tags |= {"hamdam.resumed_from": str(checkpoint)} if checkpoint else {}
        tracking.log_run_start(logger, cfg, datamodule.path, tags)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        network = trained_network(trainer, module, build_network)
        if measured is not None and network is not None and isinstance(trainer.strategy, FSDPStrategy):
            measured.measure(trainer, network.to(trainer.strategy.root_device))  # see HeldoutPerplexity
        run_dir = Path(trainer.strategy.broadcast(str(output_dir)))  # rank 0's: the run's
        try:
            if trainer.is_global_zero:
                model_dir = export_model(
                    network,
                    tokenizer,
                    markers,
                    max_length,
                    Path(cfg.paths.root_dir, cfg.export_dir),  # a relative one is under the workspace
                    backbone=init.meta["backbone"] if init else backbone_record(cfg),
                    # No run id or time in here: the same training gives the same bytes (DVC, diffs);
                    # the MLflow run points at the model instead (tag hamdam.model_dir).
                    extra={"model_name": cfg.model.name},
                )
                metrics.update(measured.metrics if measured is not None else {})
                if logger is not None:
                    tracking.log_run_outputs(logger, output_dir / "resolved_config.yaml", model_dir)
                if cfg.get("record_latest", True):
                    write_latest(Path(cfg.paths.runs_dir), model_dir, {"model_name": cfg.model.name})
        finally:
            # The other ranks wait for rank 0 (also when it failed, so that none waits on it forever):
            # when train() returns on any rank, the model and runs/latest.json are there.
            trainer.strategy.barrier("hamdam.export")
    except BaseException as error:
        if logger is not None:
            tracking.mark_failed(logger, error)
        raise
    if not trainer.is_global_zero:
        drop_stray_run_dir(output_dir, run_dir)
        return metrics
    log.info("Finished: %s", ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return metrics

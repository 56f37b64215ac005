"""The ``hamdam`` command: ``hamdam <command> [Hydra overrides...]``.

Each command is a Hydra application over ``conf/<command>.yaml``; Hydra parses the overrides,
``-m`` sweeps, ``--cfg job`` and ``--help``. Errors caused by input (HamdamError) are printed as
one paragraph without a traceback, with exit status 2.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from hamdam.config_checks import check
from hamdam.errors import HamdamError

COMMANDS: dict[str, tuple[str, str, str]] = {
    # command: (function, config name in conf/, help)
    "train": ("hamdam.training.run:train", "train", "train a model from the composed config"),
    "chat": ("hamdam.chat.session:chat", "chat", "talk to the latest trained model"),
    "evaluate": (
        "hamdam.evaluation.evaluate:evaluate",
        "evaluate",
        "perplexity and generation metrics on the eval set",
    ),
    "data build": ("hamdam.corpus.build:build", "build", "build data/seed/ from the sources in corpus/"),
    "data prepare": ("hamdam.data.prepare:prepare", "prepare", "merge, dedupe, filter, cap and split data/"),
    "data stats": ("hamdam.corpus.build:stats", "stats", "corpus counts (--json for JSON)"),
    "data import": (
        "hamdam.data.imports:import_source",
        "import",
        "PATH --format conv|jsonl|whatsapp|telegram [--speaker NAME]: a new data/ source",
    ),
    "learn": ("hamdam.learning.engine:learn", "learn", "one learning round from the stored chats, now"),
    "selfgen": (
        "hamdam.selfgen.loop:selfgen",
        "selfgen",
        "one self-generated round; --forever: the loop (every selfgen.interval_s, up to selfgen.cap)",
    ),
    "models": ("hamdam.learning.catalog:models", "models", "the trained models and which one is served (--json)"),
    "use": ("hamdam.learning.catalog:use", "models", "NAME: serve this model (pipeline, latest, a run, round-N)"),
    "rounds": ("hamdam.learning.history:rounds", "rounds", "the learning rounds (--json for JSON)"),
    "rollback": (
        "hamdam.learning.history:rollback",
        "rounds",
        "N: restore data/ and the served model of round N (0: from before the first round)",
    ),
    "safety classify": (
        "hamdam.safety.classify:classify",
        "classify",
        "crisis level (crisis/concern/none), one JSON line per stdin line",
    ),
    "safety train": ("hamdam.safety.train:train", "safety_train", "train the learned safety layers (corpus/safety)"),
}

# Flags some commands accept besides Hydra overrides, and the override each one stands for.
FLAGS: dict[str, dict[str, str]] = {
    "data stats": {"--json": "json=true"},
    "rounds": {"--json": "json=true"},
    "models": {"--json": "json=true"},
    "chat": {"--learn": "learning.enabled=true"},
    "selfgen": {"--forever": "selfgen.forever=true"},
}
# Options that take a value (``--format X`` or ``--format=X``), and the key it is given to.
OPTIONS: dict[str, dict[str, str]] = {"data import": {"--format": "importer", "--speaker": "speaker"}}
# Commands whose first argument is a value, and the override it stands for.
# (override key, whether the value is text to pass as written rather than parsed by Hydra)
POSITIONAL: dict[str, tuple[str, bool]] = {
    "rollback": ("round", False),
    "data import": ("path", True),
    "use": ("name", True),
}
# Options a command cannot run without, and what to say when one is missing.
REQUIRED: dict[str, dict[str, str]] = {
    "data import": {"importer": "say which format the file is in: --format conv|jsonl|whatsapp|telegram"}
}


def config_dir() -> Path:
    """``$HAMDAM_CONF_DIR``, else the ``conf/`` of the checkout hamdam is installed from."""
    env = os.environ.get("HAMDAM_CONF_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "conf"


def _load(target: str) -> Callable[[DictConfig], Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def run(command: str, argv: list[str] | None = None) -> None:
    """Run ``command`` as a Hydra application with ``argv`` as its command line."""
    target, config_name, _ = COMMANDS[command]
    # Imported before Hydra configures logging, so that the handlers libraries install at import
    # time (Lightning's) are replaced by conf/hydra/job_logging rather than doubling each line.
    task = _load(target)
    if argv is not None:
        flags = FLAGS.get(command, {})
        if command in POSITIONAL and argv and "=" not in argv[0] and not argv[0].startswith("-"):
            key, text = POSITIONAL[command]
            argv = [f"{key}={_quote(argv[0]) if text else argv[0]}", *argv[1:]]
        argv = [_drop_group(flags.get(a, a)) for a in _options(command, argv)]
        for key, problem in REQUIRED.get(command, {}).items():
            if not any(a.startswith(f"{key}=") for a in argv):
                sys.stderr.write(f"hamdam {command}: error: {problem}.\n")
                sys.exit(2)
        sys.argv = [f"hamdam {command}", *argv]
    precheck(command, config_name, sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _app(cfg: DictConfig) -> Any:
        try:
            check(cfg)  # again: a sweep's jobs are only composed here
            return task(cfg)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            discard_run_dir()
            sys.stderr.write(f"hamdam {command}: error: {user_error}\n")
            sys.exit(2)

    _app()


def precheck(command: str, config_name: str, overrides: list[str]) -> None:
    """Compose the config and check its settings before Hydra creates a run folder or anything else.

    Hydra's own flags (``--cfg``, ``--help``, ``-m``) are left to Hydra: a sweep is checked per job.
    """
    if any(a.startswith("-") for a in overrides):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
        check(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        message = one_paragraph(str(err))
        if message.startswith("Could not override"):
            message += " There is no such key: check its spelling."
        sys.stderr.write(
            f"hamdam {command}: error: {message} Run `hamdam {command} --cfg job` to see every "
            "key and its value; nothing was created.\n"
        )
        sys.exit(2)
    except HamdamError as err:
        sys.stderr.write(f"hamdam {command}: error: {err}\n")
        sys.exit(2)


def one_paragraph(message: str) -> str:
    """Hydra's multi-line message on one line: indented lines become a comma-separated list."""
    text = message.split("Config search path")[0]
    out = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith(("\t", "    ")) and out.endswith((":", ",")):
            out += " " + line.strip() + ","
        else:
            out = out.rstrip(",") + ("" if not out or out.endswith((".", ":")) else ".") + " " + line.strip()
    out = out.rstrip(",").strip()
    return out if out.endswith(".") else out + "."


def discard_run_dir() -> None:
    """A command that stopped on bad input leaves no run folder: nothing in it is worth keeping
    until a checkpoint or a model is written."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is None or hydra_cfg.mode.name != "RUN":
        return
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if run_dir.resolve() == Path.cwd().resolve() or not run_dir.is_dir():
        return
    if (run_dir / "checkpoints").exists() or (run_dir / "model").exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        run_dir.parent.rmdir()  # runs/, if this run was all it held
    except OSError:
        pass


def _options(command: str, argv: list[str]) -> list[str]:
    """``--format X`` / ``--format=X`` -> ``importer=X``; values are quoted for Hydra (spaces, Persian)."""
    options = OPTIONS.get(command, {})
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        name, sep, value = arg.partition("=")
        if name not in options:
            out.append(arg)
            continue
        if not sep:
            value = next(args, "")
            if not value or value.startswith("--"):
                sys.stderr.write(f"hamdam {command}: error: {name} needs a value: {name} VALUE or {name}=VALUE.\n")
                sys.exit(2)
        key = options[name]
        # A group choice is a plain name; other values may hold anything a person types.
        out.append(f"{key}={value if (config_dir() / key).is_dir() else _quote(value)}")
    return out


def _quote(value: str) -> str:
    """A Hydra override value that stays the literal string (spaces, quotes, '=' and all)."""
    # Hydra keeps backslashes as they are, except those before a quote (and the closing one).
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def _drop_group(arg: str) -> str:
    """``logger=null`` drops the config group (Hydra itself only accepts ``~logger`` for that)."""
    key, sep, value = arg.partition("=")
    if sep and value == "null" and (config_dir() / key).is_dir():
        return f"~{key}"
    return arg


# Errors of the environment, not of hamdam: a file the user cannot read, a full or read-only disk.
ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC, errno.EROFS, errno.EDQUOT}


def find_user_error(err: BaseException) -> HamdamError | None:
    """The HamdamError behind ``err``: Hydra's instantiate wraps errors raised by the objects it builds.
    A file the user cannot read or write counts too."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, HamdamError):
            return current
        if isinstance(current, OSError) and current.errno in ENVIRONMENT_ERRNOS:
            where = f"'{current.filename}'" if current.filename else "a file"
            return HamdamError(
                f"Cannot use {where}: {current.strerror}. Check that the path is right, that you may read "
                "(and write) it, and that the disk has room; then run again."
            )
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def usage() -> str:
    lines = ["usage: hamdam <command> [overrides...]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Overrides are Hydra's: key=value, group=option, -m for sweeps; `hamdam <command> --help`."]
    return "\n".join(lines)


class _DropTips(logging.Filter):
    """Lightning's advertisements ("💡 Tip: ... try installing litlogger") are not training logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_libraries() -> None:
    """Library noise, silenced once at the source for every command (before the libraries load)."""
    # bitsandbytes warns at import, on every CPU, that an optional kernel package is missing.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").setLevel(logging.WARNING)
    for name in ("mlflow.store.db.utils", "alembic"):  # database set-up chatter on every new store
        logging.getLogger(name).setLevel(logging.WARNING)
    # Download and shard progress bars of the Hugging Face libraries: hamdam logs what it loads.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


def main() -> None:
    quiet_libraries()
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else 2)
    for words in (2, 1):
        command = " ".join(args[:words])
        if command in COMMANDS:
            run(command, args[words:])
            return
    sys.stderr.write(f"hamdam: unknown command {' '.join(args[:2])!r}.\n\n{usage()}\n")
    sys.exit(2)

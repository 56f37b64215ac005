"""The ``hamdam`` command: ``hamdam <command> [Hydra overrides...]``.

Each command is a Hydra application over ``conf/<command>.yaml``; Hydra parses the overrides,
``-m`` sweeps, ``--cfg job`` and ``--help``. Errors caused by input (HamdamError) are printed as
one paragraph without a traceback, with exit status 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

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
    "learn": ("hamdam.learning.cycle:learn", "learn", "one learning round from the stored chats, now"),
    "rounds": ("hamdam.learning.history:rounds", "rounds", "the learning rounds (--json for JSON)"),
    "rollback": ("hamdam.learning.history:rollback", "rounds", "restore data/ and the model of round N"),
    "safety classify": ("hamdam.safety.classify:classify", "classify", "crisis check, one JSON line per stdin line"),
}

# Flags some commands accept besides Hydra overrides, and the override each one stands for.
FLAGS: dict[str, dict[str, str]] = {
    "data stats": {"--json": "json=true"},
    "rounds": {"--json": "json=true"},
    "chat": {"--learn": "learning.enabled=true"},
}
# Commands whose first argument is a value, and the override it stands for.
POSITIONAL: dict[str, str] = {"rollback": "round"}


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
            argv = [f"{POSITIONAL[command]}={argv[0]}", *argv[1:]]
        argv = [_drop_group(flags.get(a, a)) for a in argv]
        sys.argv = [f"hamdam {command}", *argv]

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _app(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None:
                raise
            sys.stderr.write(f"hamdam {command}: error: {user_error}\n")
            sys.exit(2)

    _app()


def _drop_group(arg: str) -> str:
    """``logger=null`` drops the config group (Hydra itself only accepts ``~logger`` for that)."""
    key, sep, value = arg.partition("=")
    if sep and value == "null" and (config_dir() / key).is_dir():
        return f"~{key}"
    return arg


def find_user_error(err: BaseException) -> HamdamError | None:
    """The HamdamError behind ``err``: Hydra's instantiate wraps errors raised by the objects it builds."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, HamdamError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def usage() -> str:
    lines = ["usage: hamdam <command> [overrides...]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Overrides are Hydra's: key=value, group=option, -m for sweeps; `hamdam <command> --help`."]
    return "\n".join(lines)


def main() -> None:
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

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

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hamdam.training.run:train", "train a model from the composed config (conf/train.yaml)"),
    "chat": ("hamdam.chat.session:chat", "talk to the latest trained model (conf/chat.yaml)"),
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
    target, _ = COMMANDS[command]
    # Imported before Hydra configures logging, so that the handlers libraries install at import
    # time (Lightning's) are replaced by conf/hydra/job_logging rather than doubling each line.
    task = _load(target)
    if argv is not None:
        sys.argv = [f"hamdam {command}", *argv]

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=command)
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
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Overrides are Hydra's: key=value, group=option, -m for sweeps; `hamdam <command> --help`."]
    return "\n".join(lines)


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else 2)
    if args[0] not in COMMANDS:
        sys.stderr.write(f"hamdam: unknown command {args[0]!r}.\n\n{usage()}\n")
        sys.exit(2)
    run(args[0], args[1:])

"""The ``hamdam`` command: ``hamdam <command> [options] [Hydra overrides...]``.

Each command has an ``argparse`` parser for its own options and help (answered without importing
torch), and runs as a Hydra application over ``conf/<config>.yaml``: everything that is not one of
the command's options is a Hydra override (``key=value``, ``group=option``, ``~group``), and
Hydra's ``-m``/``--multirun``, ``--cfg`` and ``--resolve`` pass through. Errors caused by input
(HamdamError) are printed as one paragraph without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from hamdam import config_search
from hamdam.config_checks import check
from hamdam.errors import HamdamError


@dataclass(frozen=True)
class Option:
    """One of a command's own arguments, and the Hydra override it stands for."""

    flags: tuple[str, ...]  # ("path",) for a positional, ("--format",) for an option
    key: str  # the config key it sets
    help: str
    switch: bool = False  # a flag without a value: key=true
    text: bool = False  # a value passed to Hydra as the literal string (paths, names, spaces, Persian)
    required: bool = False
    type: Callable[[str], Any] = str
    metavar: str = "VALUE"
    many: bool = False  # positional words (any number, among the KEY=VALUE overrides): key=[...]


@dataclass(frozen=True)
class Command:
    name: str  # "train", "data import"
    target: str  # module:function
    config: str  # conf/<config>.yaml
    summary: str
    example: str
    options: tuple[Option, ...] = ()


JSON = Option(("--json",), "json", "print JSON instead of a table", switch=True)
COMMANDS: tuple[Command, ...] = (
    Command("init", "hamdam.workspace:init", "init",
            "create a workspace: git, DVC with a local remote, the sample corpus, a conf/ of your own",
            "hamdam init ~/hamdam-baba\n  cd ~/hamdam-baba && hamdam train experiment=smoke && hamdam chat",
            (Option(("dir",), "dir", "the folder to create (or an empty one)", text=True),
             Option(("--remote",), "remote", "the DVC remote's URL (default: DIR/.dvc-storage)", text=True,
                    metavar="URL"))),
    Command("train", "hamdam.training.run:train", "train", "train a model from the composed config",
            "hamdam train experiment=smoke\n  hamdam train trainer.max_epochs=3 data.path=my.json\n"
            "  hamdam train -m model.lora.r=8,16 model=gpt2_fa_qlora   # a sweep"),
    Command("chat", "hamdam.chat.session:chat", "chat", "talk to the served model (`hamdam models` shows which)",
            "hamdam chat\n  echo 'سلام بابا' | hamdam chat     # one reply line per input line\n"
            "  hamdam chat --learn               # learn a round every learning.every turns",
            (Option(("--learn",), "learning.enabled", "learn from this chat (rounds in the background)",
                    switch=True),)),
    Command("serve", "hamdam.serve.app:serve", "serve",
            "serve the model over HTTP: an OpenAI-compatible API, a WebSocket chat and a web page",
            "hamdam serve                      # http://127.0.0.1:8000/ (the page), /v1 (the API)\n"
            "  hamdam serve --learn              # learn from served conversations, as chat --learn\n"
            "  HAMDAM_API_KEY=secret hamdam serve serve.host=0.0.0.0 serve.port=8080",
            (Option(("--learn",), "learning.enabled", "learn from served conversations (rounds in the background)",
                    switch=True),)),
    Command("evaluate", "hamdam.evaluation.evaluate:evaluate", "evaluate",
            "perplexity and generation metrics on the evaluation set",
            "hamdam evaluate                                # the pipeline's model -> pipeline/\n"
            "  hamdam evaluate model_dir=runs/<run>/model     # -> runs/<run>/eval/"),
    Command("data build", "hamdam.corpus.build:build", "build", "build data/seed/ from the sources in corpus/",
            "hamdam data build"),
    Command("data prepare", "hamdam.data.prepare:prepare", "prepare",
            "merge, dedupe, filter, cap and split data/ into pipeline/prepared/", "hamdam data prepare"),
    Command("data stats", "hamdam.corpus.build:stats", "stats", "corpus counts", "hamdam data stats --json",
            (JSON,)),
    Command("data import", "hamdam.data.imports:import_source", "import",
            "add a file as a new source under data/imports/ and record a DVC version",
            "hamdam data import result.json --format telegram --speaker Baba\n"
            "  hamdam data import xiaohuangji50w.conv --format conv",
            (Option(("path",), "path", "the file to import", text=True),
             Option(("--format",), "importer", "the file's format", required=True,
                    metavar="conv|jsonl|whatsapp|telegram"),
             Option(("--speaker",), "speaker", "chat exports: whose words the model learns, as the export "
                    "spells the name", text=True, metavar="NAME"),
             Option(("--persona",), "persona", "the persona card these words are (personas/NAME.yaml): its "
                    "header goes with them, and retiring it can delete them", text=True, metavar="NAME"))),
    Command("learn", "hamdam.learning.engine:learn", "learn", "one learning round from the stored chats, now",
            "hamdam learn"),
    Command("selfgen", "hamdam.selfgen.loop:selfgen", "selfgen",
            "one self-generated round; --forever: the loop", "hamdam selfgen\n  hamdam selfgen --forever",
            (Option(("--forever",), "selfgen.forever", "a round every selfgen.interval_s, up to selfgen.cap",
                    switch=True),)),
    Command("models", "hamdam.learning.catalog:models", "models",
            "the trained models here, and which one is served", "hamdam models --json", (JSON,)),
    Command("use", "hamdam.learning.catalog:use", "models", "serve a model from the next chat turn on",
            "hamdam use latest\n  hamdam use round-3",
            (Option(("name",), "name", "pipeline, latest, a run's name, round-N or a model folder", text=True),)),
    Command("rounds", "hamdam.learning.history:rounds", "rounds", "the learning rounds", "hamdam rounds --json",
            (JSON,)),
    Command("rollback", "hamdam.learning.history:rollback", "rounds",
            "restore data/ and the served model of round N (0: from before the first round)",
            "hamdam rollback 3\n  hamdam rollback 0",
            (Option(("round",), "round", "the round number (`hamdam rounds` lists them)", type=int),)),
    Command("persona list", "hamdam.persona.commands:list_personas", "personas",
            "the persona cards here: who each speaks as, consent, active or retired", "hamdam persona list --json",
            (JSON,)),
    Command("persona show", "hamdam.persona.commands:show_persona", "personas",
            "one persona card: forms of address, facts, sayings, consent and retirement",
            "hamdam persona show baba",
            (Option(("name",), "name", "the card's name (`hamdam persona list`)", text=True), JSON)),
    Command("persona new", "hamdam.persona.commands:new_persona", "personas",
            "write a new persona card to personas/NAME.yaml, for the family to complete",
            "hamdam persona new baba --relation father --listener son --display-name بابا "
            "--calls-user 'پسرم,پسر گلم' --called 'بابا,بابا جون' --given-by 'سارا (دختر)' --consent family",
            (Option(("name",), "name", "the card's name (a file name: letters, digits, - and _)", text=True),
             Option(("--relation",), "relation", "who they were to the user", required=True,
                    metavar="father|mother|brother|sister|husband|wife|son|daughter|grandfather|grandmother|friend"),
             Option(("--listener",), "listener", "who the user was to them (son, daughter, ...)", required=True),
             Option(("--display-name",), "display_name", "the name shown", required=True, text=True, metavar="NAME"),
             Option(("--calls-user",), "calls_user", "how they called the user, comma-separated", required=True,
                    text=True, metavar="FORMS"),
             Option(("--called",), "called", "how the user called them, comma-separated", required=True, text=True,
                    metavar="FORMS"),
             Option(("--given-by",), "given_by", "who gave the words", required=True, text=True, metavar="WHO"),
             Option(("--consent",), "consent_role", "donor (the person, while alive) or family", required=True,
                    metavar="donor|family"))),
    Command("persona retire", "hamdam.persona.retire:retire", "personas",
            "retire a persona: never served or learned from again, with a farewell; --delete removes its data "
            "as a new DVC version",
            "hamdam persona retire baba --farewell 'خداحافظ پسرم'\n  hamdam persona retire baba --delete",
            (Option(("name",), "name", "the card's name (`hamdam persona list`)", text=True),
             Option(("--farewell",), "farewell", "the words shown instead of a reply from then on", text=True,
                    metavar="TEXT"),
             Option(("--delete",), "delete", "also delete its imported and learned data (a new data version) "
                    "and its stored chats", switch=True))),
    Command("persona from-import", "hamdam.persona.proposal:from_import", "personas",
            "propose a persona card from the loved one's own messages (forms of address, greetings, sign-offs)",
            "hamdam persona from-import chat.txt --format whatsapp --speaker Baba --name baba "
            "--given-by 'سارا (دختر)' --consent family\n"
            "  hamdam persona from-import data/imports/chat-1a2b3c4d5e6f.jsonl --speaker بابا --name baba "
            "--given-by سارا --consent family",
            (Option(("path",), "path", "a chat export (with --format), or an imported source under data/imports/",
                    text=True),
             Option(("--speaker",), "speaker", "the loved one, as the export spells the name", required=True,
                    text=True, metavar="NAME"),
             Option(("--name",), "name", "the new card's name (personas/NAME.yaml)", required=True, text=True),
             Option(("--format",), "importer", "the file's format (default: hamdam's records, as data/imports/ "
                    "holds)", metavar="whatsapp|telegram|jsonl"),
             Option(("--given-by",), "given_by", "who gave the words", required=True, text=True, metavar="WHO"),
             Option(("--consent",), "consent_role", "donor (the person, while alive) or family", required=True,
                    metavar="donor|family"),
             Option(("--relation",), "relation", "who they were to the user, where the messages do not show it"),
             Option(("--listener",), "listener", "who the user was to them, where the messages do not show it"))),
    Command("compare", "hamdam.experiments.compare:compare", "compare",
            "MLflow runs side by side: the parameters that differ, held-out perplexity, distinct-2, persona "
            "consistency; a plot logged to MLflow",
            "hamdam compare --top 3\n  hamdam compare --experiment sweeps --top 10\n"
            "  hamdam compare pipeline-20261126-0712 round-0003",
            (Option(("runs",), "runs", "run names or ids (`hamdam compare --top 10` shows names)", many=True,
                    metavar="RUN"),
             Option(("--experiment",), "experiment", "only this MLflow experiment's runs (train, sweeps, "
                    "pipeline, rounds)", text=True, metavar="NAME"),
             Option(("--top",), "top", "the best N runs on rank_by (heldout/ppl)", metavar="N"), JSON)),
    Command("safety classify", "hamdam.safety.classify:classify", "classify",
            "crisis level (crisis/concern/none) of each stdin line, as JSON lines",
            "echo 'دیگه نمی‌خوام زنده باشم' | hamdam safety classify"),
    Command("safety train", "hamdam.safety.train:train", "safety_train",
            "train the learned safety layers (corpus/safety)", "hamdam safety train"),
)  # fmt: skip
BY_NAME = {c.name: c for c in COMMANDS}


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in hamdam's one-paragraph form (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        self.exit(2, f"{self.prog}: error: {message}. Usage: {usage} (`{self.prog} --help` explains each option).\n")


def parser_for(command: Command) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"hamdam {command.name}",
        description=command.summary[0].upper() + command.summary[1:] + ".",
        epilog=f"example:\n  {command.example}\n\nAny other KEY=VALUE is a Hydra override of "
        f"conf/{command.config}.yaml and its groups; `hamdam {command.name} --cfg job` prints the composed config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for option in command.options:
        if option.many:  # taken from the overrides' list: words without "="
            parser.usage = f"hamdam {command.name} [{option.metavar} ...] [options] [KEY=VALUE ...]"
            continue
        if option.switch:
            parser.add_argument(*option.flags, action="store_true", help=option.help)
        elif option.flags[0].startswith("-"):
            parser.add_argument(*option.flags, required=option.required, help=option.help, metavar=option.metavar)
        else:
            parser.add_argument(*option.flags, type=option.type, help=option.help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides")
    hydra_flags = parser.add_argument_group("Hydra")
    hydra_flags.add_argument("-m", "--multirun", action="store_true", help="a sweep: one job per value")
    hydra_flags.add_argument("--cfg", choices=("job", "hydra", "all"), help="print the composed config and exit")
    hydra_flags.add_argument("--resolve", action="store_true", help="with --cfg: resolve interpolations")
    return parser


def hydra_argv(command: Command, args: argparse.Namespace) -> list[str]:
    """The Hydra command line the parsed arguments stand for."""
    argv = []
    overrides = list(args.overrides)
    for option in command.options:
        if option.many:
            keys = _config_keys(command)
            words = [a for a in overrides if not _is_override(a, keys)]
            overrides = [a for a in overrides if a not in words]
            if words:
                argv.append(f"{option.key}=[{','.join(_quote(w) for w in words)}]")
            continue
        value = getattr(args, option.flags[-1].lstrip("-").replace("-", "_"))
        if option.switch:
            argv += [f"{option.key}=true"] if value else []
        elif value is not None:
            argv.append(f"{option.key}={_quote(str(value)) if option.text else value}")
    argv += [_drop_group(a) for a in overrides]
    argv += ["--multirun"] if args.multirun else []
    argv += ["--cfg", args.cfg] if args.cfg else []
    argv += ["--resolve"] if args.resolve else []
    return argv


def _config_keys(command: Command) -> set[str]:
    """The top-level keys and config groups of the command's primary config."""
    import yaml

    spec = yaml.safe_load(config_search.config_file(f"{command.config}.yaml").read_text(encoding="utf-8")) or {}
    groups = {next(iter(d)).split("/")[-1].split(" ")[-1] for d in spec.get("defaults", []) if isinstance(d, dict)}
    return {*spec, *groups, "hydra"}


def _is_override(word: str, keys: set[str]) -> bool:
    """``key=value`` (``~group``, ``+key=...``) whose key is one of the command's config ``keys``;
    other words are the command's positional words, even with "=" in them (run names)."""
    if word.startswith(("~", "+")):
        return True
    return "=" in word and word.split("=", 1)[0].split(".", 1)[0] in keys


def _load(target: str) -> Callable[[DictConfig], Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def run(command: str, argv: list[str] | None = None) -> None:
    """Run ``command`` with ``argv`` as its command line (its options and Hydra overrides)."""
    spec = BY_NAME[command]
    args = parser_for(spec).parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    overrides = hydra_argv(spec, args)
    # Imported before Hydra configures logging, so that the handlers libraries install at import
    # time (Lightning's) are replaced by conf/hydra/job_logging rather than doubling each line.
    task = _load(spec.target)
    sys.argv = [f"hamdam {command}", *overrides]
    config_search.register()
    precheck(command, spec.config, overrides)

    @hydra.main(version_base="1.3", config_path=config_search.PACKAGE_CONF, config_name=spec.config)
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

    Hydra's own flags (``--cfg``, ``-m``) are left to Hydra: a sweep is checked per job.
    """
    if any(a.startswith("-") for a in overrides):
        return
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module="hamdam.conf", version_base="1.3"):
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


def _quote(value: str) -> str:
    """A Hydra override value that stays the literal string (spaces, quotes, '=' and all)."""
    # Hydra keeps backslashes as they are, except those before a quote (and the closing one).
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def _drop_group(arg: str) -> str:
    """``logger=null`` drops the config group (Hydra itself only accepts ``~logger`` for that)."""
    key, sep, value = arg.partition("=")
    if sep and value == "null" and config_search.config_file(key).is_dir():
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


def usage(group: str | None = None) -> str:
    """The commands (of ``group``, e.g. ``data``), one line each."""
    shown = [c for c in COMMANDS if group is None or c.name.startswith(group + " ")]
    lines = [f"usage: hamdam {group + ' ' if group else ''}<command> [options] [KEY=VALUE ...]", "", "commands:"]
    lines += [f"  {c.name:<16} {c.summary}" for c in shown]
    lines += ["", "`hamdam <command> --help` shows a command's options and an example."]
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
        if command in BY_NAME:
            run(command, args[words:])
            return
    groups = {c.name.split()[0] for c in COMMANDS if " " in c.name}
    if args[0] in groups:
        wanted = len(args) < 2 or args[1] in ("-h", "--help")
        (sys.stdout if wanted else sys.stderr).write(
            ("" if wanted else f"hamdam: unknown command {' '.join(args[:2])!r}.\n\n") + usage(args[0]) + "\n"
        )
        sys.exit(0 if len(args) >= 2 and wanted else 2)
    sys.stderr.write(f"hamdam: unknown command {' '.join(args[:2])!r}.\n\n{usage()}\n")
    sys.exit(2)

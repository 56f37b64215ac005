"""``hamdam init DIR``: a workspace of its own for an installed hamdam.

A workspace is where hamdam keeps what is yours: the corpus and data/ (versioned by DVC, with a
local remote), runs, the MLflow store, chats and persona cards, all under one git repository. Its
``conf/`` starts empty: the configs ship inside the package, and a file there adds to them or
replaces one (see ``hamdam.config_search``). Every step writes into a folder that was empty, so a
failed init is undone by deleting the folder.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from hydra import compose
from omegaconf import DictConfig

from hamdam.errors import HamdamError

log = logging.getLogger(__name__)

GITIGNORE = """\
# What hamdam writes that git must not hold: DVC versions data/, MLflow and the chat store are
# databases, runs/ and .cache/ are rebuilt.
/runs/
/mlflow.db
/mlflow.db-*
/mlflow.db.lock
/mlartifacts/
/.cache/
/outputs/
/multirun/
/chats.db*
/optuna.db
/.dvc-storage/
__pycache__/
"""

CONF_README = """\
# Your configs

hamdam's own configs ship inside the package; files here come first. A new file adds a choice
(`conf/experiment/mine.yaml` is `hamdam train experiment=mine`); a file with the name of one of
hamdam's replaces it (`conf/train.yaml`, `conf/model/gpt2_fa_qlora.yaml`). Start from the composed
config: `hamdam train experiment=smoke --cfg job` prints every key and its value.

An experiment of your own, for example:

    # @package _global_
    defaults:
      - smoke
    trainer:
      max_epochs: 4
"""


def init(cfg: DictConfig) -> Path:
    root = Path(str(cfg.dir)).expanduser().resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise HamdamError(
            f"'{root}' already exists and is not an empty folder; hamdam init only fills a new or "
            "empty folder, so nothing of yours is overwritten. Choose another path, or empty it first."
        )
    if shutil.which("git") is None:
        raise HamdamError(
            "hamdam init needs git (a workspace's data versions are git commits of data.dvc), and "
            "there is no `git` on PATH. Install git, then run hamdam init again."
        )
    root.mkdir(parents=True, exist_ok=True)
    _copy_corpus(root / "corpus")
    (root / "conf").mkdir()
    (root / "conf" / "README.md").write_text(CONF_README, encoding="utf-8")
    (root / "personas").mkdir()
    (root / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(root)], check=True, capture_output=True)
    _dvc_init(root, cfg.remote)
    if cfg.build_data:
        _first_data_version(root)
    _commit(root)
    next_steps = f"cd {shlex.quote(str(root))} && hamdam train experiment=smoke && hamdam chat"
    log.info("workspace ready: %s. Next: %s", root, next_steps)
    return root


def _copy_corpus(dest: Path) -> None:
    source = Path(str(importlib.resources.files("hamdam.corpus_files")))
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"))


def _dvc_init(root: Path, remote: str | None) -> None:
    from dvc.repo import Repo

    # DVC's notes on init ("You can now commit...") go to stdout through its own handler; hamdam
    # commits and says what it did.
    logging.getLogger("dvc.repo.init").setLevel(logging.WARNING)
    with Repo.init(str(root)) as repo, repo.config.edit() as config:
        # DVC reads a local path relative to the current directory and writes it relative to .dvc/
        # (../.dvc-storage), so the workspace can move.
        default = os.path.relpath(root / ".dvc-storage", Path.cwd())
        config["remote"]["local"] = {"url": str(remote) if remote else default}
        config["core"]["remote"] = "local"
        config["core"]["autostage"] = True


def _first_data_version(root: Path) -> None:
    """data/seed/ from the copied corpus, as ``hamdam data build`` in the new workspace would."""
    from hamdam.corpus.build import build
    from hamdam.data.versioning import dvc_add_data

    cfg = compose(config_name="build")
    cfg.paths.root_dir = str(root)  # set, not an override: a path needs no quoting for Hydra
    build(cfg)
    dvc_add_data(root)


def _commit(root: Path) -> None:
    from hamdam.data.versioning import git_command

    git = git_command(root)
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "hamdam init: a new workspace"], check=True, capture_output=True)

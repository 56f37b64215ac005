"""The built wheel, installed in a fresh virtual environment outside the checkout: ``hamdam init``,
a workspace experiment over the packaged configs, ``hamdam train``, ``hamdam chat``."""

import json
import os
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

FAST = ["trainer.max_epochs=1", "callbacks.rich_progress_bar=null"]


def sh(args, cwd, env=None, stdin=None, check=True):
    result = subprocess.run(args, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout and installed into a new venv; the dependencies come from
    the test's own environment through a .pth line (the package index is not needed)."""
    root = tmp_path_factory.mktemp("wheel")
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root), str(REPO)],
       root)  # fmt: skip
    (wheel,) = root.glob("hamdam-*.whl")
    venv = root / "venv"
    sh([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    python = venv / "bin" / "python"
    sh([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], root)
    site = sh([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip()
    # A plain path line: the test environment's packages, without its editable install of hamdam.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    return wheel, venv, env


def test_the_wheel_holds_every_package_and_the_configs(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(REPO / "src").as_posix() for p in (REPO / "src").rglob("__init__.py")}
    missing = {p for p in packages if f"{p}/__init__.py" not in names}
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    data = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "hamdam").rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc")}  # fmt: skip
    assert data <= names, f"add these to [tool.setuptools.package-data]: {sorted(data - names)}"
    configs = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert {n.removeprefix("hamdam/conf/") for n in names if n.startswith("hamdam/conf/")} >= configs
    assert "hamdam/corpus_files/sample_fa.json" in names


@pytest.mark.slow
def test_init_train_and_chat_outside_the_checkout(installed, tmp_path):
    _, venv, env = installed
    where = sh([str(venv / "bin" / "python"), "-c", "import hamdam; print(hamdam.__file__)"], tmp_path, env)
    assert where.stdout.startswith(str(venv)), where.stdout  # the wheel's hamdam, not the checkout's

    hamdam = str(venv / "bin" / "hamdam")
    sh([hamdam, "init", "ws"], tmp_path, env)
    ws = tmp_path / "ws"
    assert (ws / "corpus" / "sample_fa.json").is_file() and (ws / "data" / "seed" / "grief_fa.jsonl").is_file()
    assert sh(["git", "status", "--short"], ws).stdout == ""  # everything committed or ignored
    assert sh(["git", "log", "--format=%s"], ws).stdout.strip() == "hamdam init: a new workspace"
    assert "url = ../.dvc-storage" in (ws / ".dvc" / "config").read_text()
    dvc = [str(venv / "bin" / "python"), "-m", "dvc"]
    assert json.loads(sh([*dvc, "status", "--json"], ws, env).stdout) == {}
    sh([*dvc, "push", "-q"], ws, env)
    assert any((ws / ".dvc-storage").rglob("*"))
    again = sh([hamdam, "init", "ws"], tmp_path, env, check=False)
    assert again.returncode == 2 and "not an empty folder" in again.stderr

    # An experiment of the workspace's own, over the packaged smoke experiment.
    (ws / "conf" / "experiment").mkdir()
    (ws / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - smoke\nrun_name: mine\ndata:\n  batch_size: 8\n", encoding="utf-8"
    )
    trained = sh([hamdam, "train", "experiment=mine", *FAST], ws, env)
    assert "heldout/ppl" in trained.stderr
    with sqlite3.connect(ws / "mlflow.db") as db:
        runs = db.execute("select name, status from runs").fetchall()
        batch = db.execute("select value from params where key = 'data.batch_size'").fetchall()
    assert runs == [("mine", "FINISHED")] and batch == [("8",)]

    chat = sh([hamdam, "chat"], ws, env, stdin="سلام بابا\n")
    assert "[ERROR]" not in chat.stderr, chat.stderr[-2000:]
    assert len([line for line in chat.stdout.splitlines() if line.strip()]) == 1  # one reply per line read
    assert "runs/mine/model" in sh([hamdam, "models"], ws, env).stdout

"""A new version of ``data/``: ``dvc add data`` and, in a git workspace, a commit of ``data.dvc``.

Learning rounds and imports both end with this; both may be redone after a crash, so each step
does nothing when there is nothing new.

A new source is written in the workspace's staging folder (``.dvc/tmp/hamdam/``, outside the
tracked tree and ignored by git), and moved into ``data/`` only inside ``publish``, which holds the
workspace's version lock from that move to the git commit. So a version never records a
half-written file, and two imports or rounds at once never commit each other's files. Staged files
of processes that died are removed the next time anything is staged.
"""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from filelock import FileLock

from hamdam.errors import DataError
from hamdam.io import TEMP_SUFFIX, atomic_writer, remove_stale_temp

log = logging.getLogger(__name__)

STAGING = Path(".dvc") / "tmp" / "hamdam"


def staging_dir(root: Path) -> Path:
    """The private staging folder, without the leftovers of killed processes."""
    folder = Path(root) / STAGING
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in remove_stale_temp(folder):
        log.info("removed %s, left half-written by a killed process", stale.name)
    return folder


@contextmanager
def staged_file(root: Path, name: str, mode: int = 0o600) -> Iterator[tuple[TextIO, Path]]:
    """A text handle on a new file in the staging folder, complete on disk when the block ends and
    absent if it fails. Hand the path to ``publish``. Its name carries the pid, as a temporary
    file's does, so ``remove_stale_temp`` clears it if this process is killed before publishing."""
    path = staging_dir(root) / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"
    with atomic_writer(path, mode) as handle:
        yield handle, path


def publish(
    root: Path, moves: dict[Path, Path], message: str, removals: Iterable[Path] = ()
) -> tuple[str | None, str | None]:
    """Move staged files to their places in ``data/`` (and delete ``removals``), then ``dvc add
    data`` and commit, all under the workspace's version lock; returns (data.dvc md5, git commit).
    Private folders are 0700."""
    root = Path(root)
    with FileLock(staging_dir(root) / "version.lock"):
        for stale in remove_stale_temp(root / "data"):
            log.warning("removed %s, left half-written by a killed process", stale)
        for staged, dest in moves.items():
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(staged, dest)
        for path in removals:
            Path(path).unlink(missing_ok=True)
        md5 = dvc_add_data(root)
        commit = git_commit_data_dvc(root, message)
    return md5, commit


def require_dvc(root: Path) -> None:
    """Fail before anything is written when ``root`` cannot hold a DVC version."""
    if not (Path(root) / ".dvc").is_dir():
        raise DataError(
            f"'{root}' is not a DVC workspace (no .dvc/ folder), so a new data version cannot be "
            "recorded. Run hamdam from the repository root (where data.dvc is), or `dvc init` first."
        )


def dvc_add_data(root: Path) -> str | None:
    """``dvc add data``; returns the md5 that ``data.dvc`` now names."""
    from dvc.repo import Repo

    root = Path(root)
    with Repo(str(root)) as repo:
        repo.scm_context.quiet = True  # no "git add data.dvc" hint on stdout: the caller commits it
        repo.add(str(root / "data"))
    return data_dvc_md5((root / "data.dvc").read_text(encoding="utf-8"))


def data_dvc_md5(text: str) -> str | None:
    """The md5 a ``data.dvc`` file's text names (the hash of that version of ``data/``)."""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if "md5:" in line), None)


def git_commit_data_dvc(root: Path, message: str) -> str | None:
    """Commit ``data.dvc`` when the workspace is a git repository and it changed; returns HEAD, or
    None outside git."""
    if subprocess.run(["git", "-C", str(root), "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        return None
    git = git_command(root)
    subprocess.run([*git, "add", "data.dvc"], check=True, capture_output=True)
    staged = subprocess.run([*git, "diff", "--cached", "--quiet", "--", "data.dvc"], capture_output=True)
    if staged.returncode != 0:
        subprocess.run([*git, "commit", "-q", "-m", message, "--", "data.dvc"], check=True, capture_output=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def git_command(root: Path) -> list[str]:
    """``git -C root``, with hamdam's identity where the user has none: a workspace without a git
    identity still gets its data commits."""
    git = ["git", "-C", str(root)]
    identity = subprocess.run([*git, "config", "user.email"], capture_output=True, text=True).stdout.strip()
    return git if identity else [*git, "-c", "user.name=hamdam", "-c", "user.email=hamdam@localhost"]

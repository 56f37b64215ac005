"""A new version of ``data/``: ``dvc add data`` and, in a git workspace, a commit of ``data.dvc``.

Learning rounds and imports both end with this; both may be redone after a crash, so each step
does nothing when there is nothing new.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from hamdam.errors import DataError


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
    meta = (root / "data.dvc").read_text(encoding="utf-8")
    return next((line.split(":", 1)[1].strip() for line in meta.splitlines() if "md5:" in line), None)


def git_commit_data_dvc(root: Path, message: str) -> str | None:
    """Commit ``data.dvc`` when the workspace is a git repository and it changed; returns HEAD, or
    None outside git."""
    git = ["git", "-C", str(root)]
    if subprocess.run([*git, "rev-parse", "--git-dir"], capture_output=True).returncode != 0:
        return None
    identity = subprocess.run([*git, "config", "user.email"], capture_output=True, text=True).stdout.strip()
    if not identity:  # a workspace without a git identity still gets its data commits
        git += ["-c", "user.name=hamdam", "-c", "user.email=hamdam@localhost"]
    subprocess.run([*git, "add", "data.dvc"], check=True, capture_output=True)
    staged = subprocess.run([*git, "diff", "--cached", "--quiet", "--", "data.dvc"], capture_output=True)
    if staged.returncode != 0:
        subprocess.run([*git, "commit", "-q", "-m", message, "--", "data.dvc"], check=True, capture_output=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()

"""Writing files so that a reader, or a crash, never sees half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import psutil


def write_atomic_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    with atomic_writer(path, mode) as handle:
        handle.write(text)


@contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[TextIO]:
    """A text handle for streaming into ``path``: it appears, complete, only if the block succeeds.

    The temporary file is ``.<name>.<pid>.<random>.tmp``: ``remove_stale_temp`` knows a killed
    writer's leftovers by the pid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


TEMP_SUFFIX = ".tmp"


def remove_stale_temp(folder: Path) -> list[Path]:
    """Delete the temporary files that killed writers left under ``folder``; returns them."""
    removed = []
    for path in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        parts = path.name.split(".")
        pid = parts[-3] if len(parts) >= 4 else ""
        if path.is_file() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def utf16_hint(head: bytes) -> str | None:
    """What to tell a user whose file is UTF-16 (Windows' "Unicode"), from its first bytes; else None."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        found = "it starts with a UTF-16 byte-order mark"
    elif head and head.count(0) >= len(head) // 4:
        found = "every other byte is NUL, as in UTF-16 text"
    else:
        return None
    return (
        f"It looks UTF-16 encoded ({found}); hamdam reads UTF-8. Save it as UTF-8, e.g. "
        "`iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8`, and run again."
    )

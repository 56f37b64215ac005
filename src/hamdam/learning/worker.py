"""Runs learning cycles in a separate process while the chat goes on answering.

A process rather than a thread: the chat never waits on training, a crash in training cannot take
the chat down, and a round cut short (kill -9) is finished by the next cycle (rounds.resume).
One cycle at a time; a threshold reached while one runs starts the next as soon as it ends.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class LearningWorker:
    def __init__(self, every: int, overrides: list[str], log_file: Path):
        self.every = every
        self.overrides = overrides
        self.log_file = Path(log_file)
        self.process: subprocess.Popen | None = None
        self.pending = False
        self.up_to: int | None = None  # the last turn the requested round may take
        self.turns = 0

    @property
    def busy(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        bound = [f"up_to_turn={self.up_to}"] if self.up_to is not None else []
        with open(self.log_file, "a", encoding="utf-8") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hamdam", "learn", *self.overrides, *bound],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        self.pending = False
        log.info("learning round started in the background (pid %d)", self.process.pid)

    def request(self, up_to: int | None = None) -> None:
        """Ask for a cycle over the turns up to ``up_to`` (all when None), now or when the running one ends."""
        self.pending = True
        self.up_to = up_to
        self.poll()

    def after_turn(self, turn_id: int) -> None:
        """Every ``every`` completed turns, a round over the turns so far."""
        self.turns += 1
        if self.turns % self.every == 0:
            self.request(up_to=turn_id)
        else:
            self.poll()

    def poll(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            if self.process.returncode != 0:
                log.warning("learning round failed (exit %d); see %s", self.process.returncode, self.log_file)
            self.process = None
        if self.pending and not self.busy:
            self._start()

    def finish(self) -> None:
        """At the end of a session: let the running cycle and a requested one complete."""
        while self.busy or self.pending:
            if self.process is not None:
                self.process.wait()
            self.poll()

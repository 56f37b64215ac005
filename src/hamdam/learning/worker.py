"""Runs learning rounds in one long-lived background process while the chat goes on answering.

A process rather than a thread: the chat never waits on training, and a crash in training cannot
take the chat down. One process for the whole session rather than one per round: torch, Lightning,
MLflow and DVC are imported and the round engine (safety models, held-out set, train template) is
built once, so a round pays none of that; and the served model's held-out perplexity is measured as
soon as the worker starts, not when the first round needs it. The process yields to the chat: it runs at a lower CPU
priority (``learning.worker.nice``) with a bounded number of torch threads
(``learning.worker.threads``).

The chat writes the resolved learn config to a file the worker loads (no argv strings), then sends
one JSON line per requested round on the worker's stdin; the worker answers one JSON line per
request on its stdout. Everything else the worker writes goes to ``runs/rounds/learn.log``. A round
cut short (kill -9) is finished by the next cycle (``RoundExporter.resume``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class LearningWorker:
    """The chat's side: start the worker, ask for rounds, learn when they end."""

    def __init__(self, every: int, config_file: Path, log_file: Path):
        self.every = every
        self.config_file = Path(config_file)
        self.log_file = Path(log_file)
        self.process: subprocess.Popen | None = None
        self.outstanding = 0  # rounds sent to the worker and not yet answered (at most one)
        self.waiting: int | None | bool = False  # a round asked for while one runs: its up_to, sent next
        self.turns = 0
        self.results: list[dict[str, Any]] = []
        self.ready = False  # the worker has loaded its libraries and built its round engine
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()

    @property
    def busy(self) -> bool:
        self.poll()
        return self.outstanding > 0 or self.waiting is not False

    def start(self) -> None:
        """Start the worker now, so its imports happen while the user is still typing."""
        if self.process is not None and self.process.poll() is None:
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a", encoding="utf-8") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hamdam.learning.worker", str(self.config_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=out,
                text=True,
                encoding="utf-8",
            )
        self._answers = queue.Queue()
        self.ready = False
        threading.Thread(target=self._read, args=(self.process, self._answers), daemon=True).start()
        log.info("learning worker started (pid %d)", self.process.pid)

    @staticmethod
    def _read(process: subprocess.Popen, answers: queue.Queue) -> None:
        for line in process.stdout:
            try:
                answers.put(json.loads(line))
            except json.JSONDecodeError:
                continue
        answers.put(None)  # the worker is gone

    def request(self, up_to: int | None = None) -> None:
        """Ask for a round over the turns up to ``up_to`` (all when None), now or when the running one
        ends; asking again meanwhile only moves that bound (one round then takes all those turns)."""
        self.poll()
        if self.outstanding:
            self.waiting = up_to
            return
        self._send(up_to)

    def _send(self, up_to: int | None) -> None:
        line = json.dumps({"up_to": up_to}) + "\n"
        self.start()
        try:
            self.process.stdin.write(line)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):  # the worker died since the last answer: once more, anew
            log.warning("the learning worker is gone; see %s. Restarting it.", self.log_file)
            self.process = None
            self.start()
            self.process.stdin.write(line)
            self.process.stdin.flush()
        self.outstanding += 1

    def after_turn(self, turn_id: int) -> None:
        """Every ``every`` completed turns, a round over the turns so far."""
        self.turns += 1
        if self.turns % self.every == 0:
            self.request(up_to=turn_id)
        else:
            self.poll()

    def _take(self, answer: dict[str, Any] | None) -> None:
        if answer is None:
            if self.outstanding:
                log.warning("the learning worker stopped with %d round(s) unanswered; see %s",
                            self.outstanding, self.log_file)  # fmt: skip
            self.outstanding = 0
            self.process = None
            return
        if answer.get("ready"):
            self.ready = True
            return
        self.outstanding = max(0, self.outstanding - 1)
        self.results.append(answer)
        if not answer.get("ok"):
            log.warning("learning round failed (%s); see %s", answer.get("error"), self.log_file)

    def poll(self) -> None:
        while True:
            try:
                answer = self._answers.get_nowait()
            except queue.Empty:
                break
            self._take(answer)
        self._next()

    def _next(self) -> None:
        if not self.outstanding and self.waiting is not False:
            up_to, self.waiting = self.waiting, False
            self._send(up_to)

    def wait_ready(self) -> bool:
        """Block until the worker is ready (or gone); whether it is ready."""
        while not self.ready and self.process is not None:
            self._take(self._answers.get())
        return self.ready

    def finish(self) -> None:
        """At the end of a session: let the requested rounds complete, then stop the worker."""
        while self.outstanding > 0 and self.process is not None:
            self._take(self._answers.get())
            self._next()
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait()
            self.process = None


def write_config(cfg: Any, path: Path, parent_run: str | None = None) -> Path:
    """The resolved learn config the worker loads: the workspace paths, the learning and safety
    settings, the chat session's MLflow run, and the round train template."""
    from omegaconf import OmegaConf

    from hamdam.io import write_atomic_text
    from hamdam.learning.retrain import template, workspace_paths

    resolved = {
        "paths": workspace_paths(cfg),
        "learning": OmegaConf.to_container(cfg.learning, resolve=True),
        "safety": OmegaConf.to_container(cfg.safety, resolve=True) if cfg.get("safety") else None,
        "parent_run": parent_run,
        "round_train": OmegaConf.to_container(template(cfg), resolve=False),
    }
    write_atomic_text(Path(path), OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return Path(path)


def main(argv: list[str]) -> int:
    """The worker process: ``python -m hamdam.learning.worker CONFIG``."""
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to the log, never into the answers
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(argv[0])
    settings = cfg.learning.worker
    if settings.nice:
        os.nice(int(settings.nice))
    import torch

    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    from hamdam.learning.engine import RoundEngine

    # The template is a config of its own: its interpolations (${seed}, ${paths.output_dir}) are its own.
    engine = RoundEngine(cfg, OmegaConf.create(OmegaConf.to_container(cfg.round_train)))
    try:
        engine.prepare()
    except Exception:  # a round measures what it needs anyway
        log.exception("could not measure the served model ahead of the first round")
    log.info("learning worker ready (nice %s, %d torch threads)", settings.nice, torch.get_num_threads())
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        try:
            result = engine.run(request.get("up_to"), cfg.get("parent_run"))
            answer = {"ok": True, "round": None if result is None else result.round}
            if result is not None:
                answer.update(promoted=result.promoted, seconds=result.seconds)
        except Exception as error:  # the worker outlives a failed round; the next one retries it
            log.exception("learning round failed")
            answer = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
        protocol.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

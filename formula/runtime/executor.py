"""Executors run one step at a time from its YAML; the scheduler decides what and when.

The local executor starts each step as its own process (`python -m MODULE --config-dir ...`),
which keeps a crashing step from taking the build down and lets a step be killed cleanly. A
cluster executor (submitit, Ray) implements the same `run`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Task:
    step: str
    module: str
    config_dir: Path
    config_name: str
    log: Path
    env: dict[str, str] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--config-dir", str(self.config_dir),
                "--config-name", self.config_name]

    def shell_command(self) -> str:
        return " ".join(["python", "-m", self.module, "--config-dir", str(self.config_dir),
                         "--config-name", self.config_name])


class Executor(Protocol):
    def run(self, task: Task) -> int:
        """Run the task to completion; return its exit status (0 is success)."""

    def cancel(self) -> None:
        """Stop every running task (the build was interrupted)."""


class LocalExecutor:
    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, task: Task) -> int:
        env = dict(os.environ)
        env.update(task.env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["FORMULA_PARENT_PID"] = str(os.getpid())  # the step exits if this build dies
        task.log.parent.mkdir(parents=True, exist_ok=True)
        with open(task.log, "ab") as log:
            proc = subprocess.Popen(task.command(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            with self._lock:
                self._procs.add(proc)
            try:
                return proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)

    def cancel(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

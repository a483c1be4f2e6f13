"""Executors run one step at a time from its YAML; the scheduler decides what and when.

The local executor starts each step as its own process (`python -m MODULE --config-dir ...`),
which keeps a crashing step from taking the build down and lets a step be killed cleanly. A
cluster executor (submitit, Ray) implements the same `run`.

The step's output reaches its log through the build (a pipe), not by the step writing the log
itself: when the log cannot be written (disk full), the build still holds what the step said,
keeps it in memory, and writes the rest once space is freed (`Finished.finish_log`).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

TAIL_BYTES = 64 << 10       # what the build keeps of each step's output for its summary
UNWRITTEN_BYTES = 8 << 20   # what it holds back when the log cannot be written
STOP_GRACE_SECONDS = 10.0   # after SIGTERM, a step that is still running gets SIGKILL


@dataclass(frozen=True)
class Task:
    step: str
    module: str
    config_dir: Path
    config_name: str
    log: Path
    env: dict[str, str] | None = None
    resources: dict | None = None  # what a cluster executor asks for (`cluster.Resources`)

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, "--config-dir", str(self.config_dir),
                "--config-name", self.config_name]

    def shell_command(self) -> str:
        return " ".join(["python", "-m", self.module, "--config-dir", str(self.config_dir),
                         "--config-name", self.config_name])


@dataclass
class Finished:
    """How a step ended: its exit status (negative: the signal that ended it), the end of what
    it printed, and whether its log is incomplete (and why)."""

    status: int
    tail: bytes = b""
    log_error: str = ""          # why the log could not be written whole; "" when it was
    unwritten: bytes = b""       # output not yet in the log
    cancelled: bool = False      # stopped by `cancel` (the build was interrupted)
    log: Path | None = None

    @property
    def signal_name(self) -> str:
        if self.status >= 0:
            return ""
        try:
            return signal.Signals(-self.status).name
        except ValueError:
            return f"signal {-self.status}"

    def finish_log(self, note: str = "") -> bool:
        """Append what could not be written, and `note`, to the log (after space was freed).
        Whether the log is whole now."""
        if self.log is None:
            return False
        data = self.unwritten + (note.encode() if note else b"")
        if not data:
            return not self.log_error
        try:
            with open(self.log, "ab") as fh:
                fh.write(data)
        except OSError:
            return False
        self.unwritten = b""
        if not self.log_error:
            return True
        self.log_error = ""
        return True


class Executor(Protocol):
    def run(self, task: Task) -> Finished:
        """Run the task to completion; how it ended (exit status 0 is success)."""

    def cancel(self) -> None:
        """Stop every running task (the build was interrupted)."""


class _Pump:
    """Copies a step's output from its pipe into its log, keeping the last part in memory. A
    write that fails (disk full) is not retried: the output is held back instead."""

    def __init__(self, pipe, log: Path):
        self.pipe = pipe
        self.log_path = log
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.unwritten = bytearray()
        self.error = ""
        try:
            self.log: IO[bytes] | None = open(log, "ab", buffering=0)
        except OSError as exc:
            self.log, self.error = None, f"{exc.strerror}: {log}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while chunk := os.read(self.pipe.fileno(), 1 << 16):
                self._keep(chunk)
                rest = memoryview(chunk)
                if self.log is not None and not self.error:
                    try:
                        while rest:  # an unbuffered write may take only part of a chunk
                            rest = rest[self.log.write(rest) or 0:]
                        continue
                    except OSError as exc:
                        self.error = f"{exc.strerror}: {self.log_path}"
                if len(self.unwritten) < UNWRITTEN_BYTES:
                    self.unwritten += rest[:UNWRITTEN_BYTES - len(self.unwritten)]
        except (OSError, ValueError):
            pass  # the log was closed after the step ended (a child of it still held the pipe)
        finally:
            try:
                self.pipe.close()
            except OSError:
                pass

    def _keep(self, chunk: bytes) -> None:
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size - len(self.tail[0]) > TAIL_BYTES:
            self.tail_size -= len(self.tail.popleft())

    def finish(self, timeout: float = 2.0) -> None:
        # A process the step left behind may still hold the pipe: its output is not waited for
        # (once the log is closed below, the copying stops).
        self.thread.join(timeout)
        if self.log is not None:
            try:
                self.log.close()
            except OSError as exc:
                self.error = self.error or f"{exc.strerror}: {self.log_path}"


class LocalExecutor:
    def __init__(self) -> None:
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._cancelled = False

    def run(self, task: Task) -> Finished:
        env = dict(os.environ)
        env.update(task.env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["FORMULA_PARENT_PID"] = str(os.getpid())  # the step exits if this build dies
        task.log.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(task.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        pump = _Pump(proc.stdout, task.log)
        with self._lock:
            self._procs.add(proc)
            if self._cancelled:  # cancelled while it was starting
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        try:
            status = proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)
        pump.finish()
        return Finished(status, b"".join(pump.tail), pump.error, bytes(pump.unwritten),
                        self._cancelled, task.log)

    def cancel(self) -> None:
        """SIGTERM to every running step's process group; SIGKILL to those still running after
        STOP_GRACE_SECONDS."""
        with self._lock:
            self._cancelled = True
            procs = list(self._procs)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if procs:
            threading.Thread(target=self._kill_late, args=(procs,), daemon=True).start()

    @staticmethod
    def _kill_late(procs: list[subprocess.Popen]) -> None:
        deadline = time.time() + STOP_GRACE_SECONDS
        while time.time() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

"""Live build progress: a rich table on a terminal, one line per event otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from .build import (BUILT, CACHED, FAILED, INTERRUPTED, QUEUED, REUSED, RUNNING, SKIPPED, WAITING,
                    Progress)
from .store import LockHolder

STYLE = {CACHED: "dim green", REUSED: "green", BUILT: "bold green", FAILED: "bold red",
         SKIPPED: "yellow", RUNNING: "bold cyan", WAITING: "magenta", QUEUED: "dim",
         INTERRUPTED: "bold yellow"}


class PlainProgress(Progress):
    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self._lock = threading.Lock()

    def state(self, step: str, state: str, detail: str = "") -> None:
        if state == QUEUED:
            return
        with self._lock:
            print(f"{state:>8}  {step}" + (f"  ({detail})" if detail else ""), file=self.stream,
                  flush=True)

    def waiting(self, step: str, holder: LockHolder | None) -> None:
        who = holder.describe() if holder else "another build"
        with self._lock:
            print(f" waiting  {step}: locked by {who}", file=self.stream, flush=True)

    def note(self, step: str, label: str, text: str) -> None:
        with self._lock:
            print(f"{label:>8}  {step}: {text}", file=self.stream, flush=True)


class LiveProgress(Progress):
    """A table of steps with their state and elapsed time, redrawn as the build goes."""

    def __init__(self, steps: list[str]):
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.rows: dict[str, list[Any]] = {s: [QUEUED, "", None, None] for s in steps}  # state, detail, start, end
        self._lock = threading.Lock()
        self.live = Live(self._table(), console=self.console, refresh_per_second=8,
                         transient=False, get_renderable=self._table)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)

    def _table(self):
        from rich.table import Table

        table = Table(box=None, padding=(0, 1), show_header=True, header_style="bold")
        table.add_column("step")
        table.add_column("state")
        table.add_column("time", justify="right")
        table.add_column("")
        now = time.time()
        with self._lock:
            for step, (state, detail, start, end) in self.rows.items():
                elapsed = "" if start is None else f"{(end or now) - start:.1f}s"
                table.add_row(step, f"[{STYLE[state]}]{state}[/]", elapsed, detail)
        return table

    def state(self, step: str, state: str, detail: str = "") -> None:
        with self._lock:
            row = self.rows.setdefault(step, [QUEUED, "", None, None])
            if state == RUNNING:
                row[2] = time.time()
            if state in (BUILT, FAILED, INTERRUPTED) and row[2] is not None:
                row[3] = time.time()
            row[0], row[1] = state, detail

    def waiting(self, step: str, holder: LockHolder | None) -> None:
        self.state(step, WAITING, f"locked by {holder.describe() if holder else 'another build'}")

    def note(self, step: str, label: str, text: str) -> None:
        with self._lock:
            row = self.rows.setdefault(step, [QUEUED, "", None, None])
            row[1] = f"{label}: {text}"

"""The content-addressed store: step outputs by digest, an action cache by step key, logs,
locks, refs to each formula's latest build, and tags. It knows nothing about machine learning.

    <root>/FORMAT                     store layout version
    <root>/objects/ab/<digest>/       one step's output folder, named by its content digest
    <root>/actions/ab/<key>.json      step key → output digest, config, inputs, timings, lineage
    <root>/logs/<key>.log             the step's log
    <root>/tmp/                       folders of steps in progress (never look finished)
    <root>/locks/<key>.lock           one per step being built, with a `.holder` beside it
    <root>/refs/<formula id>.json     the latest build of each formula
    <root>/tags/<name>.json           named builds
    <root>/memo.sqlite                the stat memo of `hashing.py`

Everything is written to a temporary name and renamed into place, so a killed build leaves
only `tmp/` behind, which the next build clears.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .hashing import Hasher, digest_bytes

STORE_FORMAT = 1


class StoreError(Exception):
    pass


def default_root(formula_path: str | os.PathLike) -> Path:
    env = os.environ.get("FORMULA_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return project_root(Path(formula_path).resolve().parent) / ".formula"


def project_root(start: Path) -> Path:
    """The nearest folder above `start` that looks like a project (git or pyproject), else start."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists() or (folder / "pyproject.toml").exists():
            return folder
    return start


def write_json_atomic(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@dataclass
class LockHolder:
    pid: int
    host: str
    what: str
    since: float

    def describe(self) -> str:
        ago = time.time() - self.since
        return f"pid {self.pid} on {self.host} ({self.what}, for {ago:.0f}s)"


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        fmt = self.root / "FORMAT"
        if fmt.exists():
            found = fmt.read_text().strip()
            if found != str(STORE_FORMAT):
                raise StoreError(f"{self.root} holds a store of format {found}; this formula "
                                 f"reads format {STORE_FORMAT}. Move it aside or set FORMULA_HOME.")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            for sub in ("objects", "actions", "logs", "tmp", "locks", "refs", "tags", "graphs"):
                (self.root / sub).mkdir(exist_ok=True)
            tmp = self.root / f".FORMAT.{uuid.uuid4().hex}"
            tmp.write_text(f"{STORE_FORMAT}\n")
            os.replace(tmp, fmt)

    # --- paths -----------------------------------------------------------------------------------

    def object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def action_path(self, key: str) -> Path:
        return self.root / "actions" / key[:2] / f"{key}.json"

    def log_path(self, key: str) -> Path:
        return self.root / "logs" / f"{key}.log"

    def hasher(self) -> Hasher:
        return Hasher(self.root / "memo.sqlite")

    # --- the action cache --------------------------------------------------------------------

    def action(self, key: str) -> dict | None:
        """The record of a finished step, if its output is still in the store."""
        try:
            with open(self.action_path(key), encoding="utf-8") as fh:
                record = json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not self.object_path(record["output"]).is_dir():
            return None
        return record

    def record(self, key: str, record: dict) -> None:
        write_json_atomic(self.action_path(key), record)

    def temp_dir(self, key: str) -> Path:
        path = self.root / "tmp" / f"{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit_output(self, out: Path) -> str:
        """Move a finished output folder into the store under its digest. (Hashed without the
        stat memo: each output is hashed once, at a temporary path.)"""
        digest, _ = Hasher(None).tree(out)
        target = self.object_path(digest)
        if target.exists():
            shutil.rmtree(out)  # the same content is already stored (early cutoff)
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(out, target)
        except OSError:
            if not target.exists():
                raise
            shutil.rmtree(out)
        return digest

    def clear_stale_tmp(self) -> None:
        """Remove folders left by builds that died (their pid is gone)."""
        for entry in (self.root / "tmp").iterdir():
            try:
                pid = int(entry.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if not _alive(pid):
                shutil.rmtree(entry, ignore_errors=True)

    # --- locks -------------------------------------------------------------------------------

    @contextmanager
    def lock(self, key: str, what: str, on_wait=None) -> Iterator[None]:
        """Hold the lock of one step key; wait (and say who holds it) when another build does."""
        from filelock import FileLock, Timeout  # only a build that runs something locks

        path = self.root / "locks" / f"{key}.lock"
        holder_path = path.with_suffix(".holder")
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = self._holder(holder_path)
            if on_wait is not None:
                on_wait(holder)
            lock.acquire()
        try:
            write_json_atomic(holder_path, {"pid": os.getpid(), "host": socket.gethostname(),
                                            "what": what, "since": time.time()})
            yield
        finally:
            try:
                holder_path.unlink()
            except FileNotFoundError:
                pass
            lock.release()

    @staticmethod
    def _holder(path: Path) -> LockHolder | None:
        try:
            data = json.loads(path.read_text())
            return LockHolder(data["pid"], data["host"], data["what"], data["since"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    # --- refs and tags -----------------------------------------------------------------------

    def formula_id(self, formula_path: str) -> str:
        return digest_bytes(os.path.abspath(formula_path).encode())[:16]

    def set_latest(self, formula_path: str, build: dict) -> None:
        write_json_atomic(self.root / "refs" / f"{self.formula_id(formula_path)}.json", build)

    def latest(self, formula_path: str) -> dict | None:
        try:
            return json.loads((self.root / "refs" / f"{self.formula_id(formula_path)}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def builds(self) -> list[dict]:
        out = []
        for p in sorted((self.root / "refs").glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                continue
        return out

    def tag(self, name: str, build: dict) -> None:
        write_json_atomic(self.root / "tags" / f"{name}.json", build)

    def tags(self) -> dict[str, dict]:
        out = {}
        for p in sorted((self.root / "tags").glob("*.json")):
            try:
                out[p.stem] = json.loads(p.read_text())
            except json.JSONDecodeError:
                continue
        return out

    def actions(self) -> Iterator[tuple[str, dict]]:
        for p in (self.root / "actions").glob("*/*.json"):
            try:
                yield p.stem, json.loads(p.read_text())
            except json.JSONDecodeError:
                continue

    # --- maintenance -------------------------------------------------------------------------

    def gc(self, keep_keys: set[str], dry_run: bool = False) -> tuple[int, int]:
        """Delete actions not in `keep_keys` (and their logs), then objects nothing refers to."""
        removed_actions = 0
        live_objects = set()
        for key, record in list(self.actions()):
            if key in keep_keys:
                live_objects.add(record["output"])
                continue
            removed_actions += 1
            if not dry_run:
                self.action_path(key).unlink(missing_ok=True)
                self.log_path(key).unlink(missing_ok=True)
        freed = 0
        for folder in (self.root / "objects").glob("*/*"):
            if folder.name not in live_objects:
                freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                if not dry_run:
                    shutil.rmtree(folder)
        return removed_actions, freed

    def verify(self) -> list[str]:
        """Rehash every stored object (ignoring the memo); return what does not match."""
        problems = []
        hasher = Hasher(None)
        for folder in sorted((self.root / "objects").glob("*/*")):
            digest, _ = hasher.tree(folder)
            if digest != folder.name:
                problems.append(f"object {folder.name[:16]}… holds content {digest[:16]}…")
        for key, record in self.actions():
            if not self.object_path(record.get("output", "")).is_dir():
                problems.append(f"step {record.get('step')} ({key[:16]}…) points at a missing object")
        return problems


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""The content-addressed store: step outputs by digest, an action cache by step key, logs,
locks, refs to each formula's latest build, and tags. It knows nothing about machine learning.

    <root>/FORMAT                     store layout version
    <root>/objects/ab/<digest>/       one step's output folder, named by its content digest
    <root>/seals/ab/<digest>.json     its sealed listing: each file's size, mtime, inode, digest
    <root>/quarantine/<digest>-<time>/  damaged objects moved aside, with a note of what was wrong
    <root>/actions/ab/<key>.json      step key → output digest, config, inputs, timings, lineage
    <root>/logs/<key>.log             the step's log
    <root>/tmp/                       folders of steps in progress (never look finished)
    <root>/locks/<key>.lock           one per step being built, with a `.holder` beside it
    <root>/refs/<formula id>.json     the latest build of each formula
    <root>/tags/<name>.json           named builds
    <root>/memo.sqlite                the stat memo of `hashing.py`

Everything is written to a temporary name and renamed into place, so a killed build leaves
only `tmp/` behind, which the next build clears.

A stored object is used only while it is whole: `damage` compares it with its seal by stat (no
file is read unless its stat changed), so a file deleted, truncated, added or rewritten since it
was stored is found before anything trusts it, and the object is moved to `quarantine/`.
`verify` rehashes everything, which also finds changes that kept the stat.
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
from typing import Iterator, Sequence

from .hashing import Hasher, check_seal, digest_bytes, merkle, renew_seal, seal

STORE_FORMAT = 1


class StoreError(Exception):
    pass


@dataclass
class Damage:
    """What is wrong with a stored object: (file, what) pairs, and where it was moved."""

    digest: str
    problems: list[tuple[str, str]]
    moved_to: str = ""

    def files(self, limit: int = 3) -> str:
        shown = "; ".join(f"{f}: {what}" for f, what in self.problems[:limit])
        more = len(self.problems) - limit
        return shown + (f"; and {more} more" if more > 0 else "")


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
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write names no file: name the one being written
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


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

    def seal_path(self, digest: str) -> Path:
        return self.root / "seals" / digest[:2] / f"{digest}.json"

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

    def commit_output(self, out: Path, replace: bool = False) -> tuple[str, Damage | None]:
        """Move a finished output folder into the store under its digest, with its seal written
        first. (Hashed without the stat memo: each output is hashed once, at a temporary path.)

        When the digest is already stored, the stored copy is kept if it is whole and `replace`
        is off (early cutoff); a damaged copy, or any copy when `replace` (`--force`), is
        replaced by the fresh one. Returns the digest and the damage found in a replaced copy."""
        digest, listing = seal(out)
        target = self.object_path(digest)
        damage = None
        if target.exists():
            problems = self.damage(digest, full=replace)
            if not problems and not replace:
                shutil.rmtree(out)  # the same content is already stored (early cutoff)
                return digest, None
            if problems:
                damage = Damage(digest, problems)
                damage.moved_to = str(self.quarantine(digest, damage, "replaced by a fresh build"))
            else:
                self._discard(target)
        write_json_atomic(self.seal_path(digest), listing)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(out, target)
        except OSError:
            if not target.exists():
                raise
            shutil.rmtree(out)  # a concurrent build stored the same content meanwhile
        return digest, damage

    def _discard(self, folder: Path) -> None:
        """Remove a stored folder: renamed out of the way first, so it vanishes at once."""
        trash = self.root / "tmp" / f"discard-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # --- integrity -----------------------------------------------------------------------------

    def seal_of(self, digest: str) -> dict | None:
        """The seal of an object, if there is one that matches its digest (a seal is itself
        checked: the Merkle list of its file digests must give the object's name)."""
        try:
            with open(self.seal_path(digest), encoding="utf-8") as fh:
                listing = json.load(fh)
            files = listing["files"]
            if merkle({rel: f[3] for rel, f in files.items()}) != digest:
                return None
            return listing
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            return None

    def damage(self, digest: str, full: bool = False) -> list[tuple[str, str]]:
        """What is wrong with a stored object ([] when whole). By stat against its seal, or by
        rehashing every file when `full`. An object stored before seals existed is rehashed
        once and sealed then."""
        folder = self.object_path(digest)
        if not folder.is_dir():
            return [("", "the object is missing")]
        listing = self.seal_of(digest)
        if listing is None:  # stored before seals existed, or its seal was lost: rehash once
            found, listing = seal(folder)
            if found != digest:
                return [("", "content differs from its digest (it has no seal, so which file "
                             "changed is not known)")]
            self._try_write_seal(digest, listing)
            return []
        problems, rehashed = check_seal(folder, listing, full=full)
        if not problems and rehashed:  # touched but equal: remember the new stat
            self._try_write_seal(digest, renew_seal(folder, listing))
        return problems

    def _try_write_seal(self, digest: str, listing: dict) -> None:
        try:
            write_json_atomic(self.seal_path(digest), listing)
        except OSError:
            pass  # a read-only store: checked again next time

    def quarantine(self, digest: str, damage: Damage, why: str, steps: Sequence[str] = ()) -> Path:
        """Move a damaged object out of `objects/` (so nothing uses it and the next build
        rebuilds it), with a note of what was wrong beside it."""
        folder = self.object_path(digest)
        dest = self.root / "quarantine" / f"{digest[:16]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(folder, dest)
        except FileNotFoundError:
            pass  # another build moved it already
        self.seal_path(digest).unlink(missing_ok=True)
        write_json_atomic(dest.with_suffix(".json"), {
            "digest": digest, "steps": list(steps), "why": why, "time": time.time(),
            "problems": [{"file": f, "what": w} for f, w in damage.problems]})
        return dest

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
    def lock(self, key: str, what: str, on_wait=None, stop=None) -> Iterator[None]:
        """Hold the lock of one step key; wait (and say who holds it) when another build does.
        `stop` (a threading.Event) ends the wait with KeyboardInterrupt when set."""
        from filelock import FileLock, Timeout  # only a build that runs something locks

        path = self.root / "locks" / f"{key}.lock"
        holder_path = path.with_suffix(".holder")
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = self._holder(holder_path)
            if on_wait is not None:
                on_wait(holder)
            while True:
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt("stopped while waiting for a lock")
                try:
                    lock.acquire(timeout=0.5)
                    break
                except Timeout:
                    continue
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
                    self.seal_path(folder.name).unlink(missing_ok=True)
        quarantined = self.root / "quarantine"
        if quarantined.is_dir():  # damaged objects kept for a look: gc is when they go
            for entry in quarantined.iterdir():
                if entry.is_dir():
                    freed += sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                if not dry_run:
                    (shutil.rmtree if entry.is_dir() else os.unlink)(entry)
        return removed_actions, freed

    def quarantined(self) -> set[str]:
        """Digests of the objects moved to quarantine (the next build that needs one rebuilds it)."""
        out = set()
        for note in (self.root / "quarantine").glob("*.json"):
            try:
                out.add(json.loads(note.read_text())["digest"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return out

    def verify(self, repair: bool = False) -> list[str]:
        """Rehash every stored object (ignoring stats and the memo) against its digest and its
        seal; return what is wrong, naming the steps that built each damaged object and its
        files. With `repair`, damaged objects are moved to quarantine (the next build rebuilds
        them) and objects stored before seals get one."""
        steps_of: dict[str, list[str]] = {}
        problems = []
        quarantined = self.quarantined()
        for key, record in sorted(self.actions(), key=lambda kr: str(kr[1].get("step"))):
            out = record.get("output", "")
            steps_of.setdefault(out, []).append(f"{record.get('step')} (key {key[:12]})")
            if not self.object_path(out).is_dir() and out not in quarantined:
                problems.append(f"step {record.get('step')} ({key[:12]}): its output {out[:12]} is "
                                "missing (the next build rebuilds it)")
        for folder in sorted((self.root / "objects").glob("*/*")):
            digest = folder.name
            listing = self.seal_of(digest)
            found, listing_now = seal(folder)
            if listing is None:
                wrong = [] if found == digest else [("", "content differs from its digest (no seal, "
                                                         "so the file is not known)")]
                if not wrong and repair:
                    self._try_write_seal(digest, listing_now)
            else:
                wrong = check_seal(folder, listing, full=True)[0]
                if not wrong and found != digest:
                    wrong = [("", "content differs from its digest")]
            if not wrong:
                continue
            damage = Damage(digest, wrong)
            steps = steps_of.get(digest, [])
            owner = " and ".join(steps) if steps else "no step's (unreferenced)"
            line = f"output of {owner}, object {digest[:12]}: {damage.files(limit=10)}"
            if repair:
                moved = self.quarantine(digest, damage, "formula verify --repair", steps)
                line += f"; moved to {moved.relative_to(self.root)} (the next build rebuilds it)"
            problems.append(line)
        return problems


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

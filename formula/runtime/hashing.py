"""Content digests: BLAKE3, streamed, per file, with a stat memo that survives between runs.

BLAKE3 because it is cryptographic (a key collision is not a realistic worry, unlike xxh3)
and fast enough to sit at disk speed (measured here: 4.5 GB/s on one core). A file's digest is
remembered in SQLite under its path with (size, mtime_ns, inode); an unchanged file is never
read again, and within one run each file is hashed at most once. Folders are hashed per file
(a Merkle list of relative path and file digest), so one changed file rehashes only itself.

Stored outputs are sealed: `seal` hashes a finished output folder and lists, per file, its size,
mtime, inode and digest; `check_seal` compares a stored folder with its listing by stat alone
(no file is read unless its stat changed) and names every file that is missing, added,
truncated or whose content differs.
"""

from __future__ import annotations

import glob as globlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import blake3

CHUNK = 1 << 20
# A file modified this recently may change again within the same mtime tick without the stat
# changing ("racily clean" in git's words); its digest is used but not remembered.
RACY_SECONDS = 2.0


def digest_bytes(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def hash_file(path: str | os.PathLike) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = os.path.getsize(path)
    if size >= 16 * CHUNK:
        h.update_mmap(path)
    else:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Stat:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str) -> Stat:
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


class Hasher:
    """Digests of files, folders and globs for one run, backed by a persistent stat memo."""

    def __init__(self, memo_path: str | os.PathLike | None):
        self._db = None
        # Why the memo could not be read or saved (a read-only or full store): the build goes on
        # without it (files are hashed again) and says so.
        self.memo_problem = ""
        self._writable = True
        if memo_path is not None:
            self._db = self._open(str(memo_path))
        self._run: dict[str, tuple[Stat, str]] = {}
        self._pending: list[tuple] = []
        self.files_hashed = 0
        self.bytes_hashed = 0
        self._lock = threading.RLock()

    def _open(self, path: str):
        try:
            db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                       "mtime_ns INTEGER, inode INTEGER, digest TEXT)")
            return db
        except sqlite3.Error as exc:
            first = exc
        self._writable = False
        try:  # a read-only store: read the memo as it is, remember nothing new
            db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, timeout=30,
                                 isolation_level=None, check_same_thread=False)
            db.execute("SELECT 1 FROM files LIMIT 1")
            self.memo_problem = (f"the stat memo {path} cannot be written ({first}); it was read as it "
                                 "is, and what this build hashed is not remembered")
            return db
        except sqlite3.Error:
            self.memo_problem = f"the stat memo {path} cannot be opened ({first}); files are hashed again"
            return None

    def file(self, path: str | os.PathLike) -> str:
        with self._lock:
            return self._file(os.path.abspath(path))

    def _file(self, path: str) -> str:
        if path in self._run:
            return self._run[path][1]
        stat = Stat.of(path)
        digest = None
        if self._db is not None:
            try:
                row = self._db.execute("SELECT size, mtime_ns, inode, digest FROM files WHERE path = ?",
                                       (path,)).fetchone()
            except sqlite3.Error as exc:
                row = None
                self.memo_problem = f"the stat memo could not be read ({exc}); files are hashed again"
            if row is not None and Stat(row[0], row[1], row[2]) == stat:
                digest = row[3]
        if digest is None:
            digest = hash_file(path)
            self.files_hashed += 1
            self.bytes_hashed += stat.size
            if self._writable and time.time() - stat.mtime_ns / 1e9 > RACY_SECONDS:
                self._pending.append((path, stat.size, stat.mtime_ns, stat.inode, digest))
        self._run[path] = (stat, digest)
        return digest

    def changed_since_hashed(self, path: str | os.PathLike) -> bool:
        """Whether a file hashed in this run has been modified since (inputs are re-checked
        after a step runs, so one edited meanwhile is never cached under the old key)."""
        path = os.path.abspath(path)
        if path not in self._run:
            return False
        try:
            return Stat.of(path) != self._run[path][0]
        except FileNotFoundError:
            return True

    def tree(self, root: str | os.PathLike) -> tuple[str, dict[str, str]]:
        """Digest of a folder (or one file) and the digest of each file in it."""
        root = os.path.abspath(root)
        if os.path.isfile(root):
            d = self.file(root)
            return digest_bytes(f"file\0{d}\n".encode()), {os.path.basename(root): d}
        files = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                files[os.path.relpath(full, root).replace(os.sep, "/")] = self.file(full)
        return merkle(files), files

    def glob(self, pattern: str) -> tuple[str, dict[str, str]]:
        """Digest of the files a glob matches (`**` recursive), keyed by path under its base."""
        base = glob_base(pattern)
        files = {}
        for path in sorted(globlib.glob(pattern, recursive=True)):
            if os.path.isfile(path):
                files[os.path.relpath(path, base).replace(os.sep, "/")] = self.file(path)
        return merkle(files), files

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        """Save what this run hashed. A memo that cannot be written (disk full, read-only) is
        not an error of the build: it costs the next build a rehash, and `memo_problem` says so."""
        if self._db is None:
            return
        try:
            if self._pending and self._writable:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", self._pending)
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.memo_problem = (f"the stat memo could not be saved ({exc}); the next build hashes "
                                 f"{len(self._pending)} files again")
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        finally:
            self._pending.clear()
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _walk(root: str):
    """Every file under a folder (relative path with `/`, absolute path), in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            yield os.path.relpath(full, root).replace(os.sep, "/"), full


def seal(root: str | os.PathLike) -> tuple[str, dict]:
    """Digest of a finished output folder and its sealed listing: relative path → [size,
    mtime_ns, inode, digest]. A file that changes while it is hashed is an error."""
    root = os.fspath(root)
    files: dict[str, list] = {}
    for rel, full in _walk(root):
        before = Stat.of(full)
        digest = hash_file(full)
        if Stat.of(full) != before:
            raise OSError(f"{full} changed while it was hashed")
        files[rel] = [before.size, before.mtime_ns, before.inode, digest]
    return merkle({rel: f[3] for rel, f in files.items()}), {"files": files}


def check_seal(root: str | os.PathLike, listing: dict, full: bool = False) -> tuple[list[tuple[str, str]], bool]:
    """Compare a stored folder with its sealed listing: ([(file, what is wrong)], whether a file
    was rehashed with an unchanged digest, so the listing could be renewed). By stat alone
    unless `full`; a file whose stat changed is rehashed, never trusted."""
    root = os.fspath(root)
    sealed = listing.get("files", {})
    problems, rehashed = [], False
    seen = set()
    for rel, path in _walk(root):
        seen.add(rel)
        want = sealed.get(rel)
        if want is None:
            problems.append((rel, "not in the sealed listing (added after it was stored)"))
            continue
        try:
            st = Stat.of(path)
        except OSError as exc:
            problems.append((rel, f"unreadable ({exc.strerror})"))
            continue
        if st.size != want[0]:
            problems.append((rel, f"{st.size} bytes, sealed with {want[0]} (truncated or overwritten)"
                             if st.size < want[0] else f"{st.size} bytes, sealed with {want[0]}"))
            continue
        if not full and (st.mtime_ns, st.inode) == (want[1], want[2]):
            continue
        try:
            digest = hash_file(path)
        except OSError as exc:
            problems.append((rel, f"unreadable ({exc.strerror})"))
            continue
        if digest != want[3]:
            problems.append((rel, "content differs from when it was stored"))
        elif (st.mtime_ns, st.inode) != (want[1], want[2]):
            rehashed = True
    for rel in sorted(set(sealed) - seen):
        problems.append((rel, "missing"))
    return problems, rehashed


def renew_seal(root: str | os.PathLike, listing: dict) -> dict:
    """The listing with each file's current stat (after `check_seal` found the content equal)."""
    files = {}
    for rel, f in listing.get("files", {}).items():
        st = Stat.of(os.path.join(os.fspath(root), rel))
        files[rel] = [st.size, st.mtime_ns, st.inode, f[3]]
    return {**listing, "files": files}


def merkle(files: dict[str, str]) -> str:
    return digest_bytes("".join(f"{p}\0{d}\n" for p, d in sorted(files.items())).encode())


def glob_base(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    parts = Path(pattern).parts
    base = []
    for p in parts:
        if any(ch in p for ch in "*?["):
            break
        base.append(p)
    return str(Path(*base)) if base else "."

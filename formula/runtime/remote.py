"""A shared cache: the store's objects and action records mirrored to a remote folder on fsspec
(a local or shared path, `s3://bucket/prefix`, `gs://...`, any fsspec URL), so a build on one
machine is a download on the next. It knows nothing about machine learning.

    <remote>/FORMAT                          the store layout version
    <remote>/objects/ab/<digest>/<files>     an output folder's files
    <remote>/seals/ab/<digest>.json          its listing: each file's size and digest
    <remote>/actions/ab/<key>.json           step key → record (written last)
    <remote>/logs/<key>.log                  the step's log
    <remote>/refs/<formula name>.json        the latest pushed build of a formula
    <remote>/tags/<name>.json                named builds

Pushing writes an object's files, then its seal, then the step's action record, and skips what
the remote already has, so a reader that finds a record finds its object whole, and an object
whose push was cut short has no seal and is never trusted. Objects are named by content, so
several writers may push the same one: on an object store each file appears whole when its put
completes; elsewhere (a shared folder) each file is written to a temporary name and renamed.

Pulling reads a record, then the seal of its output (the Merkle list of the seal's digests must
give the object's name), downloads exactly the files the seal lists into the store's `tmp/`,
hashes each against the seal, and only then renames the folder into `objects/` and writes the
record: a bad download is discarded and names the file. The stat memo and locks stay local.

Endpoints and credentials are fsspec's: `FSSPEC_S3_ENDPOINT_URL`, `FSSPEC_S3='{...}'` or the
backend's own (AWS_PROFILE, AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .hashing import Stat, hash_file, merkle
from .store import STORE_FORMAT, Damage, Store, write_json_atomic

# Backends where a put appears whole or not at all (object stores); elsewhere files are written
# to a temporary name and renamed.
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "abfs", "az", "adl", "memory"}


class RemoteError(Exception):
    pass


@dataclass
class Transfer:
    """What a push or pull moved, for the summary line."""

    objects: int = 0        # objects moved
    present: int = 0        # objects the other side already had
    records: int = 0        # action records moved
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def rate(self) -> str:
        mb = self.bytes / 1e6
        speed = f", {mb / self.seconds:.1f} MB/s" if self.seconds > 0 and self.bytes else ""
        return f"{mb:.1f} MB in {self.seconds:.2f}s{speed}"


class Remote:
    """One store's view of a shared cache at `url`."""

    def __init__(self, url: str, store: Store, **storage_options: Any):
        self.url = url.rstrip("/") or url
        self.store = store
        self.transfer = Transfer()
        self._counting = threading.Lock()  # a build fetches several steps at once
        with self._errors("open"):
            from fsspec.core import url_to_fs

            self.fs, self.root = url_to_fs(self.url, **storage_options)
        self.root = self.root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.atomic_put = bool(ATOMIC_PUT & set(protocols))

    def _add(self, **counts: float) -> None:
        with self._counting:
            for name, value in counts.items():
                setattr(self.transfer, name, getattr(self.transfer, name) + value)

    # --- paths -----------------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _object(self, digest: str, rel: str = "") -> str:
        return self._path("objects", digest[:2], digest, *([rel] if rel else []))

    def _seal(self, digest: str) -> str:
        return self._path("seals", digest[:2], f"{digest}.json")

    def _action(self, key: str) -> str:
        return self._path("actions", key[:2], f"{key}.json")

    def _log(self, key: str) -> str:
        return self._path("logs", f"{key}.log")

    # --- errors ----------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn a backend's exception into a RemoteError that says what to do."""
        try:
            yield
        except RemoteError:
            raise
        except ImportError as exc:
            raise RemoteError(f"{self.url}: {exc} (the shared cache's backends: "
                              "pip install 'formula[remote]')") from exc
        except (ValueError, TypeError) as exc:
            if doing != "open":
                raise
            raise RemoteError(f"{self.url} is not a URL fsspec can open: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 (each backend has its own exception classes)
            raise RemoteError(f"cannot {doing} {self.url}: {_why(exc)}") from exc

    def check(self, create: bool = False) -> None:
        """Say now, not halfway through a build, when the remote cannot be reached or read (or,
        with `create`, written): a missing folder or bucket, no credentials, the wrong layout."""
        with self._errors("reach"):
            fmt = self._path("FORMAT")
            try:
                found = self.fs.cat_file(fmt).decode().strip()
            except FileNotFoundError:
                found = None
            if found is None and not create:
                if not self.fs.exists(self.root):
                    raise RemoteError(f"no shared cache at {self.url}: it does not exist (nothing "
                                      "was pushed there yet; `formula push` creates it)")
                return
            if found is not None and found != str(STORE_FORMAT):
                raise RemoteError(f"{self.url} holds a store of format {found}; this formula "
                                  f"reads format {STORE_FORMAT}")
            if found is None:
                if not self.atomic_put:
                    self.fs.makedirs(self.root, exist_ok=True)
                self._put_bytes(fmt, f"{STORE_FORMAT}\n".encode())

    # --- reading ---------------------------------------------------------------------------------

    def _json(self, path: str) -> dict | None:
        with self._errors("read"):
            try:
                data = self.fs.cat_file(path)
            except FileNotFoundError:
                return None
        try:
            value = json.loads(data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def action(self, key: str) -> dict | None:
        record = self._json(self._action(key))
        if record is None or record.get("key") != key or not isinstance(record.get("output"), str):
            return None
        return record

    def seal_of(self, digest: str) -> dict[str, list] | None:
        """An object's listing on the remote, if it is whole there: the seal exists (it is written
        after the files) and its digests give the object's name."""
        return self._seal_files(digest, self._json(self._seal(digest)))

    @staticmethod
    def _seal_files(digest: str, listing: object) -> dict[str, list] | None:
        try:
            files = listing["files"]  # type: ignore[index]
            if merkle({rel: f[3] for rel, f in files.items()}) != digest:
                return None
            return files
        except (KeyError, TypeError, IndexError, AttributeError):
            return None

    def build(self, name: str, tag: str = "") -> dict | None:
        """A pushed build: the named tag, or the latest build of the formula `name`."""
        return self._json(self._path("tags", f"{tag}.json") if tag else self._path("refs", f"{name}.json"))

    # --- pulling ---------------------------------------------------------------------------------

    def fetch(self, key: str) -> dict | None:
        """The step `key` from the remote into the local store, verified: its record, or None
        when the remote does not have it. What the build consults before running a step."""
        record = self.action(key)
        if record is None:
            return None
        started = time.time()
        digest = record["output"]
        found = self._cat([self._seal(digest), self._log(key)])  # one round of requests
        if self.store.damage(digest):
            self._fetch_objects([digest], {digest: self._seal_files(digest, _parse(found.get(self._seal(digest))))})
        else:
            self._add(present=1)
        self._write_log(key, record, found.get(self._log(key)))
        self.store.record(key, record)
        self._add(records=1)
        self._add(seconds=time.time() - started)
        return record

    def pull(self, keys: list[str]) -> list[str]:
        """Every step of `keys` the local store lacks, objects in one batch, then their records.
        Returns the keys the remote does not have."""
        started = time.time()
        records, missing = {}, []
        for key in keys:
            have = self.store.action(key)
            if have is not None and not self.store.damage(have["output"]):
                self._add(present=1)
                continue
            record = self.action(key)
            if record is None:
                missing.append(key)
            else:
                records[key] = record
        need = sorted({r["output"] for r in records.values() if self.store.damage(r["output"])})
        found = self._cat([self._seal(d) for d in need] + [self._log(k) for k in records])
        self._fetch_objects(need, {d: self._seal_files(d, _parse(found.get(self._seal(d)))) for d in need})
        for key, record in records.items():  # records last: each names an object now stored
            self._write_log(key, record, found.get(self._log(key)))
            self.store.record(key, record)
            self._add(records=1)
        self._add(seconds=time.time() - started)
        return missing

    def _cat(self, paths: list[str]) -> dict[str, bytes]:
        """Small files read at once (concurrently where the backend can); missing ones left out."""
        if not paths:
            return {}
        with self._errors("download from"):
            return self.fs.cat(paths, on_error="omit")

    def _fetch_objects(self, digests: list[str], known: dict[str, dict[str, list] | None]) -> None:
        """Download objects into `tmp/`, check every file against its seal (`known`: the seals
        read already, None where missing or invalid), then rename each into `objects/`. Nothing
        reaches `objects/` unverified."""
        seals = {}
        for digest in digests:
            files = known.get(digest)
            if files is None:
                raise RemoteError(f"{self.url}: object {digest[:12]} has no valid seal (its push did "
                                  "not finish, or the seal was damaged); it was not used")
            seals[digest] = files
        staged: dict[str, Path] = {}
        try:
            rpaths, lpaths = [], []
            for digest, files in seals.items():
                out = self.store.temp_dir(digest) / "out"
                out.mkdir()
                staged[digest] = out
                for rel in files:
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    rpaths.append(self._object(digest, rel))
                    lpaths.append(str(out / rel))
            if rpaths:
                with self._errors("download from"):
                    self.fs.get(rpaths, lpaths)
            for digest, out in staged.items():
                listing = self._verify(digest, out, seals[digest])
                self._install(digest, out, listing)
        finally:
            for out in staged.values():
                shutil.rmtree(out.parent, ignore_errors=True)

    def _verify(self, digest: str, out: Path, files: dict[str, list]) -> dict:
        """The local seal of a downloaded object, after each file matched the remote's seal."""
        local: dict[str, list] = {}
        wrong = []
        for rel, (size, _, _, want) in files.items():
            path = out / rel
            try:
                st = Stat.of(str(path))
                got = hash_file(path) if st.size == size else ""
            except OSError as exc:
                wrong.append(f"{rel}: not downloaded ({exc.strerror})")
                continue
            if st.size != size:
                wrong.append(f"{rel}: {st.size} bytes, sealed with {size}")
            elif got != want:
                wrong.append(f"{rel}: content differs from its seal (digest {got[:12]}, sealed {want[:12]})")
            local[rel] = [st.size, st.mtime_ns, st.inode, got]
            self._add(files=1)
            self._add(bytes=st.size)
        if wrong:
            more = f"; and {len(wrong) - 3} more" if len(wrong) > 3 else ""
            raise RemoteError(f"{self.url}: object {digest[:12]} is damaged on the remote ("
                              + "; ".join(wrong[:3]) + more + "); the download was discarded and "
                              "nothing was stored")
        return {"files": local}

    def _install(self, digest: str, out: Path, listing: dict) -> None:
        target = self.store.object_path(digest)
        if target.exists():
            problems = self.store.damage(digest)
            if not problems:
                return  # a concurrent pull or build stored it meanwhile
            self.store.quarantine(digest, Damage(digest, problems), f"replaced by a download from {self.url}")
        write_json_atomic(self.store.seal_path(digest), listing)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(out, target)
        except OSError:
            if not target.exists():
                raise
        self._add(objects=1)

    def _write_log(self, key: str, record: dict, data: bytes | None) -> None:
        """The step's log, when the remote had it; the record then names the local copy."""
        if data is None:
            return
        local = self.store.log_path(key)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, local)
        record["log"] = str(local)

    # --- pushing ---------------------------------------------------------------------------------

    def push(self, keys: list[str]) -> list[str]:
        """Each step of `keys` from the local store to the remote: objects (files, then seal)
        first, records last, skipping what the remote has. Returns the keys not pushed (no local
        record, or a damaged local object), each with why in `transfer.problems`."""
        started = time.time()
        skipped = []
        records = {}
        for key in keys:
            record = self.store.action(key)
            if record is None:
                skipped.append(key)
                self.transfer.problems.append(f"{key[:12]}: not in the local store")
                continue
            if self.action(key) is not None and self.seal_of(record["output"]) is not None:
                self._add(present=1)
                continue
            records[key] = record
        pushed = set()
        for digest in sorted({r["output"] for r in records.values()}):
            problems = self.store.damage(digest)
            if problems:
                self.transfer.problems.append(f"object {digest[:12]} is damaged locally ("
                                              + Damage(digest, problems).files() + "); not pushed "
                                              "(`formula build` rebuilds it)")
                continue
            if self.seal_of(digest) is None:
                self._push_object(digest)
            pushed.add(digest)
        for key, record in records.items():
            if record["output"] not in pushed:
                skipped.append(key)
                continue
            log = self.store.log_path(key)
            with self._errors("upload to"):
                if log.is_file():
                    self._put_file(str(log), self._log(key))
                self._put_bytes(self._action(key), json.dumps(record, indent=1, sort_keys=True,
                                                              default=str).encode())
            self._add(records=1)
        self._add(seconds=time.time() - started)
        return skipped

    def _push_object(self, digest: str) -> None:
        listing = self.store.seal_of(digest)
        if listing is None:  # damage() above sealed it if it had none
            raise RemoteError(f"object {digest[:12]} has no seal in {self.store.root}")
        folder = self.store.object_path(digest)
        files = listing["files"]
        with self._errors("upload to"):
            if self.atomic_put:
                self.fs.put([str(folder / rel) for rel in files], [self._object(digest, rel) for rel in files])
            else:
                for rel in files:
                    self._put_file(str(folder / rel), self._object(digest, rel))
            # The seal, after every file: what marks the object whole. Only size and digest
            # travel; stats are local to each machine.
            self._put_bytes(self._seal(digest), json.dumps(
                {"files": {rel: [f[0], 0, 0, f[3]] for rel, f in files.items()}}, sort_keys=True).encode())
        self._add(objects=1)
        self._add(files=len(files))
        self._add(bytes=sum(f[0] for f in files.values()))

    def publish(self, name: str, build: dict, tag: str = "") -> None:
        """Name a pushed build on the remote: the tag if given, else the formula's latest."""
        data = json.dumps(build, indent=1, sort_keys=True, default=str).encode()
        with self._errors("upload to"):
            self._put_bytes(self._path("tags", f"{tag}.json") if tag else self._path("refs", f"{name}.json"), data)

    def _put_file(self, local: str, remote: str) -> None:
        if self.atomic_put:
            self.fs.put_file(local, remote)
            return
        tmp = self._temp_name(remote)
        self.fs.makedirs(tmp.rsplit("/", 1)[0], exist_ok=True)
        try:
            self.fs.put_file(local, tmp)
            self.fs.mv(tmp, remote)
        except BaseException:
            _quietly(self.fs.rm_file, tmp)
            raise

    def _put_bytes(self, remote: str, data: bytes) -> None:
        if self.atomic_put:
            self.fs.pipe_file(remote, data)
            return
        tmp = self._temp_name(remote)
        self.fs.makedirs(tmp.rsplit("/", 1)[0], exist_ok=True)
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, remote)
        except BaseException:
            _quietly(self.fs.rm_file, tmp)
            raise

    @staticmethod
    def _temp_name(remote: str) -> str:
        head, name = remote.rsplit("/", 1)
        return f"{head}/.{name}.{uuid.uuid4().hex}.tmp"


def _parse(data: bytes | None) -> object:
    try:
        return json.loads(data) if data is not None else None
    except ValueError:
        return None


def _why(exc: BaseException) -> str:
    """A backend's failure in words, with what to do for the usual ones."""
    name = type(exc).__name__
    text = str(exc) or name
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError") or \
            "credentials" in text.lower() and "unable to locate" in text.lower():
        return (f"no credentials ({text}); set them the backend's way (AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3, GOOGLE_APPLICATION_CREDENTIALS "
                "for GCS), or FSSPEC_S3_ANON=true for a public bucket")
    if isinstance(exc, PermissionError):
        return f"access denied ({text}); check the credentials' permissions on it"
    if isinstance(exc, FileNotFoundError):
        return f"not found ({text}); check the bucket or folder name"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                "ServerDisconnectedError") or isinstance(exc, (ConnectionError, TimeoutError)):
        return (f"unreachable ({text}); check the network and the endpoint (FSSPEC_S3_ENDPOINT_URL "
                "for an S3-compatible server)")
    return f"{name}: {text}"


def _quietly(func, *args) -> None:
    try:
        func(*args)
    except Exception:  # noqa: BLE001 (cleaning up after a failure that is reported already)
        pass

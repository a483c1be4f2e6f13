"""Decides what runs: keys each step, reuses what the store has, runs the rest in dependency
order (independent steps in parallel), and records what it built.

A step's key is a BLAKE3 digest of: the key format version, its kind, its code identity (module,
project imports, library versions), its canonical configuration, and the digests of its inputs
(upstream outputs and data files). Upstream outputs enter by content digest, so a rerun step
whose output did not change leaves its dependents cached (early cutoff).

A cached output is used only while it is whole (its seal, checked by stat); a damaged one is
moved to the store's quarantine and rebuilt. A build stopped by SIGINT or SIGTERM stops its
steps, keeps what finished, and says so; a step killed by a signal says which.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from .codehash import code_identity
from .executor import Executor, Finished, LocalExecutor, Task
from formula.contract.graph import FileInput, Graph, StepSpec, TaggedInput
from .hashing import Hasher, digest_bytes, glob_base
from .remote import RemoteError
from .step import describe_filesystem, describe_os_error, nearly_full
from .store import Damage, LockHolder, Store, project_root, write_json_atomic
from .steps import module_for

KEY_FORMAT = 2  # 2: paths inside the project are keyed relative to it

CACHED, REUSED, BUILT, FAILED, SKIPPED, RUNNING, WAITING, QUEUED, INTERRUPTED = (
    "cached", "reused", "built", "failed", "skipped", "running", "waiting", "queued", "interrupted")


class TagError(Exception):
    """A tagged build's output that a step reads is not in the store."""


class Interrupted(KeyboardInterrupt):
    """The build was asked to stop (SIGINT arrives as a plain KeyboardInterrupt; the CLI turns
    SIGTERM into this)."""

    def __init__(self, signame: str = "SIGINT"):
        super().__init__(signame)
        self.signame = signame


def canonical(value: object) -> object:
    """Configuration in a form whose JSON does not depend on key order or float spelling."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def canonical_json(value: object) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Keyed:
    """A step with its key worked out."""

    spec: StepSpec
    key: str
    components: dict
    files: dict[str, dict[str, str]]  # input name → {relative path: digest}
    paths: dict[str, str]             # input name → path handed to the step
    watched: dict[str, list[str]]     # input name → the absolute paths that were hashed


@dataclass
class Outcome:
    step: str
    state: str
    key: str = ""
    output: str = ""
    seconds: float = 0.0
    log: str = ""
    rerun: str = ""
    error: str = ""
    # Checks the step's output reports as failed (its `checks.json`): the artifact is kept and
    # cached, but the build does not succeed while any stands.
    failed_checks: list = field(default_factory=list)
    # The end of the step's output as the build received it, when its log could not be
    # written whole (the summary shows this instead of the log's last lines).
    tail: str = ""
    notes: list = field(default_factory=list)  # e.g. a damaged output moved aside and rebuilt
    kept: str = ""                              # for an interrupted step: what of it was kept


@dataclass
class BuildResult:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    interrupted: str = ""                        # the signal that stopped the build
    warnings: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.state in (CACHED, REUSED, BUILT) and not o.failed_checks
                                            for o in self.outcomes.values())


class Progress:
    """What a build reports as it goes; the CLI shows it (rich), tests record it."""

    def state(self, step: str, state: str, detail: str = "") -> None:
        pass

    def waiting(self, step: str, holder: LockHolder | None) -> None:
        pass

    def note(self, step: str, label: str, text: str) -> None:
        """Something the user should know about a step that is not a change of state."""


class RemoteCache(Protocol):
    """A shared cache consulted before a step runs (formula/runtime/remote.py)."""

    url: str

    def fetch(self, key: str) -> dict | None:
        """The step `key`'s record, its output put in the local store and verified first; None
        when the cache has not got it. Raises RemoteError when it cannot give it whole."""


class Builder:
    def __init__(self, graph: Graph, store: Store, formula: str, executor: Executor | None = None,
                 jobs: int = 1, progress: Progress | None = None, env: dict[str, str] | None = None,
                 remote: RemoteCache | None = None):
        self.graph = graph
        self.store = store
        self.formula = formula
        self.executor = executor or LocalExecutor()
        self.jobs = max(1, jobs)
        self.progress = progress or Progress()
        self.env = env
        self.remote = remote
        self._remote_notes: dict[str, list[str]] = {}
        self._hash_lock = threading.Lock()
        self._stop = threading.Event()

    # --- keys --------------------------------------------------------------------------------

    def key(self, spec: StepSpec, upstream: dict[str, str], hasher: Hasher) -> Keyed:
        """`upstream`: output digest of each step `spec` depends on."""
        module = module_for(spec.kind)
        impl, libs = code_identity(module)
        inputs, files, paths, watched = {}, {}, {}, {}
        for name, dep in sorted(spec.deps.items()):
            inputs[name] = upstream[dep]
            paths[name] = str(self.store.object_path(upstream[dep]))
        for name, t in sorted(spec.tagged.items()):
            inputs[name] = self.tagged_output(t)
            paths[name] = str(self.store.object_path(inputs[name]))
        for name, fi in sorted(spec.files.items()):
            with self._hash_lock:
                if fi.is_glob:
                    digest, listing = hasher.glob(fi.pattern)
                elif Path(fi.pattern).exists():
                    digest, listing = hasher.tree(fi.pattern)
                else:
                    digest, listing = "missing", {}
            inputs[name] = digest
            files[name] = listing
            paths[name] = fi.pattern
            watched[name] = _absolute(fi, listing)
        components = {"format": KEY_FORMAT, "kind": spec.kind, "impl": impl,
                      "libs": dict(libs), "config": canonical(spec.config), "inputs": inputs}
        # Keyed with paths in the project relative to it (the files enter by content), so a
        # checkout elsewhere has the same keys and the shared cache serves it.
        project = str(project_root(Path(self.formula).resolve().parent))
        keyed_on = {**components, "config": _relocatable(components["config"], project)}
        return Keyed(spec, digest_bytes(canonical_json(keyed_on).encode()), components, files,
                     paths, watched)

    def tagged_output(self, t: TaggedInput) -> str:
        """The output digest of step `t.step` in the build tagged `t.tag`."""
        build = self.store.tags().get(t.tag)
        if build is None:
            raise TagError(f"no build is tagged `{t.tag}` in {self.store.root}: build the version "
                           f"to compare with and name it with `formula tag {t.tag} FORMULA`")
        key = build.get("steps", {}).get(t.step)
        record = self.store.action(key) if key else None
        if record is None:
            raise TagError(f"the build tagged `{t.tag}` ({build.get('formula', '?')}) has no "
                           f"stored output of {t.step}" + ("" if key else ": it has no such step")
                           + f"; build that version again and `formula tag {t.tag} FORMULA`")
        damage = self.store.damage(record["output"])
        if damage:
            raise TagError(f"the output of {t.step} in the build tagged `{t.tag}` is damaged ("
                           + "; ".join(f"{f}: {w}" for f, w in damage[:3]) + ")")
        return record["output"]

    # --- running -----------------------------------------------------------------------------

    def missing_implementations(self, selected: set[str]) -> dict[str, str]:
        """Step kinds among `selected` whose module cannot be found: kind → module."""
        import importlib.util

        out = {}
        for kind in sorted({self.graph.steps[n].kind for n in selected}):
            module = module_for(kind)
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                out[kind] = module
        return out

    def build(self, only: set[str] | None = None, force: set[str] | None = None,
              overrides: tuple[str, ...] = (), plan_name: str = "") -> BuildResult:
        force = force or set()
        selected = self.graph.closure(only) if only else set(self.graph.steps)
        order = [n for n in self.graph.order() if n in selected]
        result = BuildResult()
        outputs: dict[str, str] = {}
        keys: dict[str, str] = {}
        self.store.clear_stale_tmp()
        for n in order:
            self.progress.state(n, QUEUED)
        hasher = self.store.hasher()
        pool = ThreadPoolExecutor(max_workers=self.jobs)
        running: dict[Future, str] = {}
        pending = list(order)
        notes: dict[str, list[str]] = {}
        try:
            while pending or running:
                for name in list(pending):
                    spec = self.graph.steps[name]
                    deps = set(spec.deps.values())
                    if any(result.outcomes.get(d) and result.outcomes[d].state in (FAILED, SKIPPED)
                           for d in deps):
                        pending.remove(name)
                        result.outcomes[name] = Outcome(name, SKIPPED)
                        self.progress.state(name, SKIPPED, "an input failed")
                        continue
                    if not all(d in outputs for d in deps):
                        continue
                    pending.remove(name)
                    try:
                        keyed = self.key(spec, outputs, hasher)
                    except OSError as exc:
                        result.outcomes[name] = Outcome(name, FAILED, error="cannot read its input: "
                                                        + describe_os_error(exc))
                        self.progress.state(name, FAILED, "cannot read its input")
                        continue
                    except TagError as exc:
                        result.outcomes[name] = Outcome(name, FAILED, error=str(exc))
                        self.progress.state(name, FAILED, "a tagged build is missing")
                        continue
                    keys[name] = keyed.key
                    record = self.store.action(keyed.key)
                    if record is not None and name not in force:
                        damage = self._damaged(name, record)
                        if damage is None:
                            outputs[name] = record["output"]
                            result.outcomes[name] = Outcome(name, CACHED, keyed.key, record["output"],
                                                            failed_checks=_failed(record))
                            self.progress.state(name, CACHED)
                            continue
                        if not damage.moved_to:  # could not be moved aside: never use it
                            result.outcomes[name] = Outcome(name, FAILED, keyed.key, error=damage.problems[-1][1])
                            self.progress.state(name, FAILED, "damaged output")
                            continue
                        notes[name] = [f"its stored output was damaged ({damage.files()}); moved to "
                                       f"{damage.moved_to} and built again"]
                    running[pool.submit(self._run, keyed, hasher, name in force)] = name
                if not running:
                    continue
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    outcome = fut.result()
                    outcome.notes = notes.get(name, []) + self._remote_notes.pop(name, []) + outcome.notes
                    result.outcomes[name] = outcome
                    if outcome.state in (BUILT, REUSED, CACHED):  # CACHED: from the remote
                        outputs[name] = outcome.output
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM through the CLI's handler
            result.interrupted = getattr(exc, "signame", "SIGINT")
            self._stop.set()
            self.executor.cancel()
            for fut, name in running.items():  # the steps stop; say how each ended
                try:
                    result.outcomes[name] = fut.result()
                except Exception as err:  # noqa: BLE001 (reported, not raised, while stopping)
                    result.outcomes[name] = Outcome(name, INTERRUPTED, error=str(err))
            for name in pending:
                result.outcomes[name] = Outcome(name, SKIPPED, error="not started: the build was interrupted")
                self.progress.state(name, SKIPPED, "interrupted")
        except BaseException:
            self._stop.set()
            self.executor.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
            hasher.close()
            if hasher.memo_problem:
                result.warnings.append(hasher.memo_problem)
        previous = self.store.latest(self.formula) or {}
        steps = dict(previous.get("steps", {})) if only or result.interrupted else {}
        steps.update({n: o.key for n, o in result.outcomes.items() if o.state in (CACHED, REUSED, BUILT)})
        try:
            self.store.set_latest(self.formula, {
                "formula": str(Path(self.formula).resolve()), "name": plan_name, "time": time.time(),
                "steps": steps, "overrides": list(overrides), "ok": result.ok,
                "graph": {n: sorted(set(s.deps.values())) for n, s in self.graph.steps.items()}})
        except OSError as exc:
            result.warnings.append("this build could not be recorded as the formula's latest: "
                                   + describe_os_error(exc))
        return result

    def _damaged(self, name: str, record: dict) -> Damage | None:
        """None when a cached output is whole; else what is wrong, the object moved aside."""
        digest = record["output"]
        problems = self.store.damage(digest)
        if not problems:
            return None
        damage = Damage(digest, problems)
        self.progress.note(name, "damaged", damage.files())
        try:
            damage.moved_to = str(self.store.quarantine(digest, damage, "found damaged by formula build",
                                                        [name]).relative_to(self.store.root))
        except OSError as exc:
            damage.problems.append(("", f"its output {digest[:12]} is damaged ({damage.files()}) and "
                                        f"could not be moved aside: {describe_os_error(exc)}"))
        return damage

    def _run(self, keyed: Keyed, hasher: Hasher, forced: bool) -> Outcome:
        name = keyed.spec.name
        try:
            return self._run_locked(keyed, hasher, forced)
        except KeyboardInterrupt:  # stopped while waiting for another build's lock
            return Outcome(name, SKIPPED, keyed.key, error="not started: the build was interrupted")
        except OSError as exc:  # the store could not be written: full, read-only, failing disk
            self.progress.state(name, FAILED, "cannot write the store")
            return Outcome(name, FAILED, keyed.key, error="cannot write the store: "
                           + describe_os_error(exc, exc.filename or self.store.root))
        except Exception as exc:  # a bug in the build itself, not in the step
            self.progress.state(name, FAILED, "internal error")
            return Outcome(name, FAILED, keyed.key, error=f"internal error: {type(exc).__name__}: {exc}")

    def _lock(self, key: str, name: str):
        return self.store.lock(key, f"{name} of {Path(self.formula).name}",
                               on_wait=lambda holder: self.progress.waiting(name, holder),
                               stop=self._stop)

    def _fetch(self, name: str, key: str) -> Outcome | None:
        """The step downloaded from the shared cache instead of run; None when the cache has
        not got it, or cannot give it whole (the step then runs here, and a note says why)."""
        assert self.remote is not None
        try:
            record = self.remote.fetch(key)
        except RemoteError as exc:
            self.progress.note(name, "remote", str(exc))
            self._remote_notes[name] = [f"not taken from the shared cache, so built here: {exc}"]
            return None
        if record is None:
            return None
        self.progress.state(name, CACHED, f"downloaded from {self.remote.url}")
        return Outcome(name, CACHED, key, record["output"], failed_checks=_failed(record))

    def _run_locked(self, keyed: Keyed, hasher: Hasher, forced: bool) -> Outcome:
        spec, key = keyed.spec, keyed.key
        name = spec.name
        if self._stop.is_set():
            return Outcome(name, SKIPPED, key, error="not started: the build was interrupted")
        with self._lock(key, name):
            if self._stop.is_set():
                return Outcome(name, SKIPPED, key, error="not started: the build was interrupted")
            record = self.store.action(key)
            if record is not None and not forced and self._damaged(name, record) is None:
                self.progress.state(name, REUSED, "built by a concurrent build")
                return Outcome(name, REUSED, key, record["output"], failed_checks=_failed(record))
            if self.remote is not None and not forced:
                fetched = self._fetch(name, key)
                if fetched is not None:
                    return fetched
            self.progress.state(name, RUNNING)
            run_dir = self.store.temp_dir(key)
            out = run_dir / "out"
            work = self.store.root / "work" / key
            facts_path = run_dir / "facts.json"
            log = self.store.log_path(key)
            log.unlink(missing_ok=True)
            module = module_for(spec.kind)
            _write_step_yaml(run_dir / "step.yaml", {
                "config": spec.config, "inputs": keyed.paths, "output": str(out),
                "work": str(work), "facts": str(facts_path),
                "hydra": {"run": {"dir": str(run_dir / "hydra")}, "output_subdir": None,
                          "job": {"chdir": False}}})
            # Every step knows its name and key (a tracker names its run after them).
            task = Task(name, module, run_dir, "step", log,
                        {**(self.env or {}), "FORMULA_STEP": name, "FORMULA_STEP_KEY": key},
                        spec.resources)
            upstream = [self.store.object_path(keyed.components["inputs"][inp])
                        for inp in (*spec.deps, *spec.tagged)]
            before = {p: _listing(p) for p in upstream}
            started = time.time()
            finished = self.executor.run(task)
            seconds = time.time() - started
            ran: dict[str, Any] = dict(key=key, seconds=seconds, log=str(log), rerun=task.shell_command())
            touched = _undo_writes(before)
            if finished.status != 0:
                return self._failed_run(name, finished, run_dir, work, ran)
            if touched:
                self.progress.state(name, FAILED, "it wrote into an input")
                return Outcome(name, FAILED, **ran,
                               error="the step wrote into a stored input, which must stay as built: "
                                     + ", ".join(touched[:3]) + " (files it added were removed; "
                                     "`formula verify` checks the rest)")
            with self._hash_lock:
                changed = [fi.pattern for inp, fi in spec.files.items()
                           if self._input_changed(fi, keyed.watched[inp], hasher)]
            if changed:
                self.progress.state(name, FAILED, "an input changed while it ran")
                _remove(out)
                return Outcome(name, FAILED, **ran,
                               error="input changed while the step ran, so its output was not "
                                     "cached: " + ", ".join(changed) + "; build again")
            if not out.is_dir():
                self.progress.state(name, FAILED, "no output")
                return Outcome(name, FAILED, key, seconds=seconds, log=str(log),
                               error="the step wrote no output folder")
            metrics = _read_json(out / "metrics.json", {})
            checks = _read_json(out / "checks.json", [])
            facts = _read_json(facts_path, {})
            notes = []
            try:
                digest, replaced = self.store.commit_output(out, replace=forced)
                lineage = {inp: {"step": dep, "output": keyed.components["inputs"][inp]}
                           for inp, dep in spec.deps.items()}
                lineage.update({inp: {"step": t.step, "tag": t.tag, "output": keyed.components["inputs"][inp]}
                                for inp, t in spec.tagged.items()})
                self.store.record(key, {
                    "format": KEY_FORMAT, "key": key, "step": name, "kind": spec.kind,
                    "module": module, "output": digest, "components": keyed.components,
                    "files": keyed.files, "formula": str(Path(self.formula).resolve()),
                    "origin": spec.origin, "started": started, "seconds": round(seconds, 3),
                    "log": str(log), "lineage": lineage, "metrics": metrics, "run": facts,
                    "checks": checks})
            except OSError as exc:
                _remove(out)  # nothing half-stored: the record, written last, was not
                finished.finish_log()
                self.progress.state(name, FAILED, "cannot store its output")
                return Outcome(name, FAILED, **ran, tail=_text(finished.tail) if finished.log_error else "",
                               error="its output could not be stored (so it was not cached): "
                                     + describe_os_error(exc))
            if replaced is not None:
                notes.append(f"the stored copy it replaced was damaged ({replaced.files()}); moved to "
                             f"{Path(replaced.moved_to).relative_to(self.store.root)}")
            if finished.log_error and not finished.finish_log():
                notes.append(f"its log could not be written whole ({finished.log_error})")
            _remove(run_dir)
            _remove(work)
            self.progress.state(name, BUILT, f"{seconds:.1f}s")
            return Outcome(name, BUILT, key, digest, seconds, str(log), notes=notes,
                           failed_checks=[c for c in checks if not c.get("passed")])

    def _failed_run(self, name: str, finished: Finished, run_dir: Path, work: Path, ran: dict) -> Outcome:
        """A step that did not succeed: why, in one line; its half-written output removed (which
        also frees the space a full disk needs for the rest of its log)."""
        out = run_dir / "out"
        full = [p for p in (out, work, Path(ran["log"])) if nearly_full(p)]
        said_full = b"No space left on device" in finished.tail or b"error: disk full" in finished.tail
        where = describe_filesystem(full[0] if full else work) if full or said_full else ""
        _remove(out)
        if finished.cancelled or self._stop.is_set():
            state = INTERRUPTED
            kept = _kept(work)
            how = f"stopped ({finished.signal_name})" if finished.signal_name else f"exit status {finished.status}"
            error = f"interrupted: {how} when the build was interrupted"
            detail = "interrupted"
        elif finished.status < 0:
            state, kept = FAILED, ""
            sig = finished.signal_name
            error = f"killed by {sig} (signal {-finished.status}), not by this build"
            if sig == "SIGKILL":
                error += " (the kernel's out-of-memory killer sends SIGKILL: see `dmesg`)"
            detail = f"killed by {sig}"
        else:
            state, kept = FAILED, ""
            error = detail = f"exit status {finished.status}"
        if where:
            error = f"disk full on {where}; {error}; its half-written output was removed"
            detail = "disk full"
        self.progress.state(name, state, detail)
        whole = finished.finish_log(f"\n[formula] step {name}: {error}\n")
        tail = "" if whole else _text(finished.tail)
        if not whole and finished.log_error:
            error += f"; its log could not be written whole ({finished.log_error})"
        rerun = ran["rerun"] if state == FAILED else ""
        return Outcome(name, state, ran["key"], seconds=ran["seconds"], log=ran["log"], rerun=rerun,
                       error=error, tail=tail, kept=kept)

    @staticmethod
    def _input_changed(fi: FileInput, before: list[str], hasher: Hasher) -> bool:
        """Whether a data input differs from when it was hashed: a file added, removed, or
        modified (by stat, which every edit changes). Nothing is read again."""
        return sorted(_list_files(fi)) != sorted(before) or \
            any(hasher.changed_since_hashed(p) for p in before)


def _relocatable(value: object, project: str) -> object:
    """A configuration with every path inside `project` written relative to it."""
    if isinstance(value, str) and (value == project or value.startswith(project + os.sep)):
        return "${project}" + value[len(project):]
    if isinstance(value, dict):
        return {k: _relocatable(v, project) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocatable(v, project) for v in value]
    return value


def _absolute(fi: FileInput, listing: dict[str, str]) -> list[str]:
    """The files a listing was made of (so the re-check compares exactly what was hashed)."""
    if fi.is_glob:
        base = os.path.abspath(glob_base(fi.pattern))
    elif os.path.isfile(fi.pattern):
        return [os.path.abspath(fi.pattern)]
    else:
        base = os.path.abspath(fi.pattern)
    return [os.path.join(base, rel) for rel in listing]


def _list_files(fi: FileInput) -> list[str]:
    if fi.is_glob:
        return [os.path.abspath(p) for p in globlib.glob(fi.pattern, recursive=True)
                if os.path.isfile(p)]
    if os.path.isfile(fi.pattern):
        return [os.path.abspath(fi.pattern)]
    return [os.path.abspath(os.path.join(d, f)) for d, _, fs in os.walk(fi.pattern) for f in fs]


def _write_step_yaml(path: Path, content: dict) -> None:
    """The step's whole configuration as Hydra YAML (what `--config-name step` loads)."""
    from omegaconf import OmegaConf

    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"# {content['config'].get('name', '')} step configuration, written by formula build\n"
                   + OmegaConf.to_yaml(OmegaConf.create(content)))
    os.replace(tmp, path)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {os.path.relpath(os.path.join(d, f), folder): (st.st_size, st.st_mtime_ns)
            for d, _, fs in os.walk(folder) for f in fs
            for st in (os.stat(os.path.join(d, f)),)}


def _undo_writes(before: dict[Path, dict]) -> list[str]:
    """Stored objects are immutable, but a step runs with the user's permissions and a library
    may write beside what it reads (a dataset's cache files). By stat, which is cheap: files
    added to an input are removed again; changed ones are reported."""
    touched = []
    for folder, listing in before.items():
        now = _listing(folder)
        for rel in sorted(set(now) - set(listing)):
            os.unlink(folder / rel)
            touched.append(f"{folder.name[:12]}/{rel} (added)")
        touched += [f"{folder.name[:12]}/{rel} (changed)" for rel in sorted(listing)
                    if rel in now and now[rel] != listing[rel]]
    return touched


def _kept(work: Path) -> str:
    """What an interrupted step leaves for the next build: its checkpoints, if any."""
    try:
        files = [f for f in work.rglob("*") if f.is_file()]
    except OSError:
        files = []
    if not files:
        return "nothing (it had written no checkpoint)"
    size = sum(f.stat().st_size for f in files)
    return f"its work folder ({len(files)} files, {size / 2**20:.1f} MiB: checkpoints the next build resumes from)"


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _read_json(path: Path, default):
    """A step's optional report file (`metrics.json`, `checks.json`); unreadable is absent."""
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, type(default)) else default
    except (OSError, ValueError):
        return default


def _failed(record: dict) -> list:
    return [c for c in record.get("checks", []) if isinstance(c, dict) and not c.get("passed")]


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

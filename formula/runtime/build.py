"""Decides what runs: keys each step, reuses what the store has, runs the rest in dependency
order (independent steps in parallel), and records what it built.

A step's key is a BLAKE3 digest of: the key format version, its kind, its code identity (module,
project imports, library versions), its canonical configuration, and the digests of its inputs
(upstream outputs and data files). Upstream outputs enter by content digest, so a rerun step
whose output did not change leaves its dependents cached (early cutoff).
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
from typing import Callable

from .codehash import code_identity
from .executor import Executor, LocalExecutor, Task
from .graph import FileInput, Graph, StepSpec
from .hashing import Hasher, digest_bytes, glob_base
from .store import LockHolder, Store, write_json_atomic
from .steps import module_for

KEY_FORMAT = 1

CACHED, REUSED, BUILT, FAILED, SKIPPED, RUNNING, WAITING, QUEUED = (
    "cached", "reused", "built", "failed", "skipped", "running", "waiting", "queued")


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


@dataclass
class BuildResult:
    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(o.state in (CACHED, REUSED, BUILT) and not o.failed_checks
                   for o in self.outcomes.values())


class Progress:
    """What a build reports as it goes; the CLI shows it (rich), tests record it."""

    def state(self, step: str, state: str, detail: str = "") -> None:
        pass

    def waiting(self, step: str, holder: LockHolder | None) -> None:
        pass


class Builder:
    def __init__(self, graph: Graph, store: Store, formula: str, executor: Executor | None = None,
                 jobs: int = 1, progress: Progress | None = None, env: dict[str, str] | None = None):
        self.graph = graph
        self.store = store
        self.formula = formula
        self.executor = executor or LocalExecutor()
        self.jobs = max(1, jobs)
        self.progress = progress or Progress()
        self.env = env
        self._hash_lock = threading.Lock()

    # --- keys --------------------------------------------------------------------------------

    def key(self, spec: StepSpec, upstream: dict[str, str], hasher: Hasher) -> Keyed:
        """`upstream`: output digest of each step `spec` depends on."""
        module = module_for(spec.kind)
        impl, libs = code_identity(module)
        inputs, files, paths, watched = {}, {}, {}, {}
        for name, dep in sorted(spec.deps.items()):
            inputs[name] = upstream[dep]
            paths[name] = str(self.store.object_path(upstream[dep]))
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
        return Keyed(spec, digest_bytes(canonical_json(components).encode()), components, files,
                     paths, watched)

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
                    keyed = self.key(spec, outputs, hasher)
                    keys[name] = keyed.key
                    record = self.store.action(keyed.key)
                    if record is not None and name not in force:
                        outputs[name] = record["output"]
                        result.outcomes[name] = Outcome(name, CACHED, keyed.key, record["output"],
                                                        failed_checks=_failed(record))
                        self.progress.state(name, CACHED)
                        continue
                    running[pool.submit(self._run, keyed, hasher, name in force)] = name
                if not running:
                    continue
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    outcome = fut.result()
                    result.outcomes[name] = outcome
                    if outcome.state in (BUILT, REUSED):
                        outputs[name] = outcome.output
        except BaseException:
            self.executor.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
            hasher.close()
        previous = self.store.latest(self.formula) or {}
        steps = dict(previous.get("steps", {})) if only else {}
        steps.update({n: o.key for n, o in result.outcomes.items() if o.state in (CACHED, REUSED, BUILT)})
        self.store.set_latest(self.formula, {
            "formula": str(Path(self.formula).resolve()), "name": plan_name, "time": time.time(),
            "steps": steps, "overrides": list(overrides), "ok": result.ok,
            "graph": {n: sorted(set(s.deps.values())) for n, s in self.graph.steps.items()}})
        return result

    def _run(self, keyed: Keyed, hasher: Hasher, forced: bool) -> Outcome:
        try:
            return self._run_locked(keyed, hasher, forced)
        except Exception as exc:  # a bug or an I/O failure in the build itself, not in the step
            self.progress.state(keyed.spec.name, FAILED, "internal error")
            return Outcome(keyed.spec.name, FAILED, keyed.key,
                           error=f"internal error: {type(exc).__name__}: {exc}")

    def _run_locked(self, keyed: Keyed, hasher: Hasher, forced: bool) -> Outcome:
        spec, key = keyed.spec, keyed.key
        name = spec.name
        with self.store.lock(key, f"{name} of {Path(self.formula).name}",
                             on_wait=lambda holder: self.progress.waiting(name, holder)):
            record = self.store.action(key)
            if record is not None and not forced:
                self.progress.state(name, REUSED, "built by a concurrent build")
                return Outcome(name, REUSED, key, record["output"], failed_checks=_failed(record))
            self.progress.state(name, RUNNING)
            run_dir = self.store.temp_dir(key)
            out = run_dir / "out"
            work = self.store.root / "work" / key
            log = self.store.log_path(key)
            log.unlink(missing_ok=True)
            module = module_for(spec.kind)
            _write_step_yaml(run_dir / "step.yaml", {
                "config": spec.config, "inputs": keyed.paths, "output": str(out),
                "work": str(work),
                "hydra": {"run": {"dir": str(run_dir / "hydra")}, "output_subdir": None,
                          "job": {"chdir": False}}})
            task = Task(name, module, run_dir, "step", log, self.env)
            upstream = [self.store.object_path(keyed.components["inputs"][inp]) for inp in spec.deps]
            before = {p: _listing(p) for p in upstream}
            started = time.time()
            status = self.executor.run(task)
            seconds = time.time() - started
            touched = _undo_writes(before)
            if touched:
                self.progress.state(name, FAILED, "it wrote into an input")
                return Outcome(name, FAILED, key, seconds=seconds, log=str(log), rerun=task.shell_command(),
                               error="the step wrote into a stored input, which must stay as built: "
                                     + ", ".join(touched[:3]) + " (files it added were removed; "
                                     "`formula verify` checks the rest)")
            if status != 0:
                self.progress.state(name, FAILED, f"exit status {status}")
                return Outcome(name, FAILED, key, seconds=seconds, log=str(log),
                               rerun=task.shell_command(), error=f"exit status {status}")
            with self._hash_lock:
                changed = [fi.pattern for inp, fi in spec.files.items()
                           if self._input_changed(fi, keyed.watched[inp], hasher)]
            if changed:
                self.progress.state(name, FAILED, "an input changed while it ran")
                return Outcome(name, FAILED, key, seconds=seconds, log=str(log),
                               rerun=task.shell_command(),
                               error="input changed while the step ran, so its output was not "
                                     "cached: " + ", ".join(changed) + "; build again")
            if not out.is_dir():
                return Outcome(name, FAILED, key, seconds=seconds, log=str(log),
                               error="the step wrote no output folder")
            metrics = _read_json(out / "metrics.json", {})
            checks = _read_json(out / "checks.json", [])
            digest = self.store.commit_output(out)
            lineage = {inp: {"step": dep, "output": keyed.components["inputs"][inp]}
                       for inp, dep in spec.deps.items()}
            self.store.record(key, {
                "format": KEY_FORMAT, "key": key, "step": name, "kind": spec.kind,
                "module": module, "output": digest, "components": keyed.components,
                "files": keyed.files, "formula": str(Path(self.formula).resolve()),
                "origin": spec.origin, "started": started, "seconds": round(seconds, 3),
                "log": str(log), "lineage": lineage, "metrics": metrics, "checks": checks})
            _remove(run_dir)
            _remove(work)
            self.progress.state(name, BUILT, f"{seconds:.1f}s")
            return Outcome(name, BUILT, key, digest, seconds, str(log),
                           failed_checks=[c for c in checks if not c.get("passed")])

    @staticmethod
    def _input_changed(fi: FileInput, before: list[str], hasher: Hasher) -> bool:
        """Whether a data input differs from when it was hashed: a file added, removed, or
        modified (by stat, which every edit changes). Nothing is read again."""
        return sorted(_list_files(fi)) != sorted(before) or \
            any(hasher.changed_since_hashed(p) for p in before)


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


def _read_json(path: Path, default):
    """A step's optional report file (`metrics.json`, `checks.json`); unreadable is absent."""
    if path.is_file():
        try:
            value = json.loads(path.read_text())
            return value if isinstance(value, type(default)) else default
        except json.JSONDecodeError:
            return default
    return default


def _failed(record: dict) -> list:
    return [c for c in record.get("checks", []) if isinstance(c, dict) and not c.get("passed")]


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

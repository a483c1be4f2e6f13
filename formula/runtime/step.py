"""What every step module shares: its one entry as a Hydra application.

A step module defines a `Config` dataclass (its OmegaConf structured config; None takes the
configuration as a plain dict), a function
`run(cfg, inputs, output, work)`, optionally `LIBRARIES` (distributions whose versions shape its
output), and ends with

    main = step_entry(Config, run)
    if __name__ == "__main__":
        main()

so that `python -m MODULE --config-dir DIR --config-name step` runs it alone from the YAML the
build wrote: `config` (the resolved configuration), `inputs` (name → folder or file), `output`
(an empty folder to fill), `work` (scratch space that survives a crash, for checkpoints) and
`facts` (where `run_facts` writes). The step knows nothing about caching, hashing or the store.

The output folder is content-addressed: two runs that compute the same thing must write the same
bytes there. Facts about one run (wall times, throughput, whether it resumed) go through
`run_facts` into the step's action record instead, so they never change the output's digest.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, NoReturn


PARENT_ENV = "FORMULA_PARENT_PID"
NODE_RANK_ENV = "FORMULA_NODE_RANK"
_facts_path: Path | None = None
# Errors of the filesystem, not of the step: said in one line, naming the filesystem.
FS_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only filesystem", errno.EIO: "I/O error",
             errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
             errno.EFBIG: "file too large"}


def owns_output() -> bool:
    """Whether this process writes the step's output: rank 0 of a multi-process step, and of a
    multi-node one the first node's launcher (a cluster executor sets FORMULA_NODE_RANK)."""
    return os.environ.get("RANK", os.environ.get(NODE_RANK_ENV, "0")) == "0"


def run_facts(**facts) -> None:
    """Record facts about this run (seconds, throughput, resumed) in the step's action record
    rather than in its output. Merged across calls; rank 0 of a multi-process step writes."""
    if _facts_path is None or not owns_output():
        return
    try:
        current = json.loads(_facts_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        current = {}
    current.update(facts)
    tmp = _facts_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, sort_keys=True, default=str))
    os.replace(tmp, _facts_path)


def mount_point(path: str | os.PathLike) -> str:
    """The mount point of the filesystem holding `path` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        dev = os.stat(path).st_dev
        while path != "/":
            parent = os.path.dirname(path)
            if os.stat(parent).st_dev != dev:
                break
            path = parent
    except OSError:
        pass
    return path


def describe_filesystem(path: str | os.PathLike) -> str:
    """`/mnt/store (tmpfs, 0 B free of 1.0 MiB)`: the filesystem a path lives on."""
    mount = mount_point(path)
    kind = ""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) > 2 and parts[1].replace("\\040", " ") == mount:
                    kind = parts[2]  # the last entry for a mount point is the visible one
    except OSError:
        pass
    try:
        st = os.statvfs(mount)
        space = f"{_human(st.f_bavail * st.f_frsize)} free of {_human(st.f_blocks * st.f_frsize)}"
    except OSError:
        space = ""
    detail = ", ".join(x for x in (kind, space) if x)
    return f"{mount} ({detail})" if detail else mount


def nearly_full(path: str | os.PathLike, margin: int = 1 << 20) -> bool:
    """Whether the filesystem holding `path` has less than `margin` bytes (or inodes) left."""
    try:
        st = os.statvfs(mount_point(path))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin or (st.f_files > 0 and st.f_favail == 0)


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an I/O failure: what, where, and on which filesystem."""
    where = path or exc.filename
    what = FS_ERRNOS.get(exc.errno or 0) or exc.strerror or type(exc).__name__
    if where is None:
        return what
    return f"{what}: {where} on {describe_filesystem(where)}"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def kill_on_parent_death() -> None:
    """Linux: have the kernel kill this process when its parent dies (PR_SET_PDEATHSIG)."""
    import signal

    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: `die_with_parent` still catches a parent that is already gone


def die_with_parent() -> None:
    """A step must not outlive the build that started it: a killed build would otherwise
    leave a step writing into the work folder that the next build resumes from."""
    kill_on_parent_death()
    parent = os.environ.get(PARENT_ENV)
    if parent and int(parent) != os.getppid():
        os._exit(1)


def step_entry(config_cls: type | None, run: Callable) -> Callable[[], None]:
    def main() -> None:
        die_with_parent()
        import hydra
        from omegaconf import OmegaConf

        @hydra.main(version_base=None, config_path=None, config_name=None)
        def app(cfg) -> None:
            if config_cls is None:
                config = OmegaConf.to_container(cfg.config, resolve=True)
            else:
                config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config_cls), cfg.config))
            inputs = {k: Path(v) for k, v in cfg.inputs.items()}
            output = Path(cfg.output)
            if owns_output():
                if output.exists():
                    shutil.rmtree(output)
                output.mkdir(parents=True)
            work = Path(cfg.work)
            work.mkdir(parents=True, exist_ok=True)
            global _facts_path
            _facts_path = Path(cfg.facts) if cfg.get("facts") else None
            try:
                run(config, inputs, output, work)
            except OSError as exc:
                if exc.errno not in FS_ERRNOS:
                    raise
                # stderr is a pipe to the build, so this line gets out even when the disk is full
                where = "" if exc.filename else f" (its output is on {describe_filesystem(output)})"
                print(f"error: {describe_os_error(exc)}{where}", file=sys.stderr, flush=True)
                raise SystemExit(3)
            except Exception as exc:
                # A chat template that fails where a library renders it (trl's trainers render
                # preference pairs): one line at the template's line, not a traceback. Steps that
                # render templates themselves say which template and session.
                from formula.contract.templates import template_error

                what = template_error(exc)
                if what is None:
                    raise
                print(f"error: the model's chat template failed as this step rendered it: {what}",
                      file=sys.stderr, flush=True)
                raise SystemExit(3)

        app()
        exit_without_teardown()

    return main


def exit_without_teardown() -> None:
    """End a step that succeeded without the interpreter's teardown: freeing torch's and
    transformers' modules object by object takes about a second, the same order as a short
    step's own overhead. Exit handlers still run (logging flushes, datasets removes its
    temporary caches there), and everything the step wrote was closed before `run` returned."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def fail(message: str) -> NoReturn:
    """End a step with a message for the user (no traceback): bad input, not a bug."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(3)

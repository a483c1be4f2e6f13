"""Executors that run a step on another worker: a Slurm cluster through submitit, or a Ray
cluster. The build's scheduling, keys, locks and early cutoff stay in `build.py`; these only
run the same command (`python -m MODULE --config-dir D --config-name step`) elsewhere.

The worker must see the store at the same path (a shared filesystem): the step reads its inputs
from the store, writes its output into the store's temporary folder, and its output goes into
the store's log file there (`run_step`), so `formula log` and the failure summary read it as for
a local step. submitit and Ray are imported only when such an executor is made: `formula check`
and local builds never import them.

Job arrays: the build submits a step when its inputs are built, one job per step, so steps that
are independent are already queued side by side; an array would only save `sbatch` calls.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .executor import STOP_GRACE_SECONDS, TAIL_BYTES, Finished, Task

# What a step needs from the build's environment on a worker whose own environment may differ
# (a Ray worker starts with the raylet's; sbatch passes the submitter's on to Slurm jobs).
FORWARDED_PREFIXES = ("FORMULA_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH_")
FORWARDED = ("PYTHONPATH", "NO_COLOR")


class ExecutorError(Exception):
    """A cluster executor that cannot be used as asked (its package is missing, a bad address)."""


def _need(module: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExecutorError(f"this executor needs the {module} package: pip install 'formula[{extra}]'") \
            from None


def step_env(task: Task) -> dict[str, str]:
    """The environment a step gets on a worker, over the worker's own."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED}
    env.pop("FORMULA_PARENT_PID", None)  # a process id means nothing on another machine
    env.update(task.env or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_step(command: list[str], env: dict[str, str], log: str) -> int:
    """Run on the worker: the step as a child process, its output appended to its log, and its
    exit status returned (negative: the signal that ended it). Interrupted (a cancelled job or
    Ray task), it stops the step first. On node N > 0 of a multi-node job (Slurm's SLURM_NODEID,
    or NODE_RANK) the log is `LOG.nodeN`, and node 0 owns the output."""
    full = {**os.environ, **env}
    full["FORMULA_PARENT_PID"] = str(os.getpid())  # the step exits if this process dies
    node = full.get("SLURM_NODEID") or full.get("NODE_RANK") or "0"
    full["FORMULA_NODE_RANK"] = node
    path = Path(log if node == "0" else f"{log}.node{node}")
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, *command[1:]]  # the worker's Python, with formula installed
    # SIGTERM (scancel, submitit's local controller) stops the step too (submitit's own handler
    # in a job only logs it); the worker's handler is back once the step ended (a Ray worker
    # runs other tasks after this one).
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _interrupted) if main else None
    try:
        with open(path, "ab", buffering=0) as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=full, start_new_session=True)
            try:
                # Polled, not a blocking wait: Ray cancels a task by raising KeyboardInterrupt in
                # it between bytecodes, which a blocking wait would not reach until the step ended.
                while proc.poll() is None:
                    time.sleep(0.2)
                return proc.returncode
            except BaseException:
                _stop(proc)
                raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, before)


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(STOP_GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(log: Path) -> bytes:
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - TAIL_BYTES))
            return fh.read()
    except OSError:
        return b""


def _ended_without_status(task: Task, cancelled: bool, why: str) -> Finished:
    """A job that did not return the step's status (killed by the scheduler, its worker lost):
    the reason goes into the log, so the failure summary shows it. A cancelled one was stopped."""
    if cancelled:
        return Finished(-signal.SIGTERM, log_tail(task.log), cancelled=True, log=task.log)
    note = f"\n[formula] step {task.step}: its job ended without an exit status: {why.strip()}\n"
    try:
        with open(task.log, "ab") as fh:
            fh.write(note.encode())
    except OSError:
        pass
    return Finished(1, log_tail(task.log), log=task.log)


@dataclass(frozen=True)
class Resources:
    """What a step asks of its worker (a stage's `resources { ... }`); none of it enters the
    step's key."""

    gpus: int = 0
    cpus: int = 0            # 0: the engine's default
    memory: int = 0          # bytes; 0: the engine's default
    time: int = 0            # minutes; 0: the engine's default
    partition: str = ""
    nodes: int = 1

    @classmethod
    def of(cls, task: Task) -> "Resources":
        return cls(**(task.resources or {}))


class SubmititExecutor:
    """Each step is one submitit job: Slurm on a cluster, submitit's local executor elsewhere
    (`cluster = "local"`), or whichever submitit finds (`cluster = None`: Slurm when `sbatch`
    is on the PATH)."""

    def __init__(self, folder: Path, cluster: str | None = None, poll_seconds: float = 0.5):
        self.submitit = _need("submitit", "slurm")
        self.folder = Path(folder)
        self.cluster = cluster
        self.poll_seconds = poll_seconds
        self._jobs: set = set()
        self._lock = threading.Lock()
        self._cancelled = False

    def parameters(self, task: Task) -> dict:
        r = Resources.of(task)
        params: dict = {"name": f"formula-{task.step}", "tasks_per_node": 1, "nodes": r.nodes}
        if r.gpus:
            params["gpus_per_node"] = r.gpus
        if r.cpus:
            params["cpus_per_task"] = r.cpus
        if r.memory:
            params["mem_gb"] = max(1, -(-r.memory // 1024**3))
        if r.time:
            params["timeout_min"] = r.time
        if r.partition:
            params["slurm_partition"] = r.partition
        return params

    def run(self, task: Task) -> Finished:
        task.log.parent.mkdir(parents=True, exist_ok=True)
        executor = self.submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        executor.update_parameters(**self.parameters(task))
        with self._lock:
            if self._cancelled:
                return Finished(-signal.SIGTERM, cancelled=True, log=task.log)
            job = executor.submit(run_step, task.command(), step_env(task), str(task.log))
            self._jobs.add(job)
        try:
            while not job.done():
                time.sleep(self.poll_seconds)
            try:  # one status per node: the step failed if any node's did
                status = next((s for s in job.results() if s != 0), 0)
            except Exception as exc:  # noqa: BLE001 (the job failed outside the step: said in its log)
                return _ended_without_status(task, self._cancelled, f"{type(exc).__name__}: {exc}"[-2000:])
        finally:
            with self._lock:
                self._jobs.discard(job)
        return Finished(status, log_tail(task.log), cancelled=self._cancelled, log=task.log)

    def cancel(self) -> None:
        """Cancel every job (`scancel` on Slurm; SIGTERM to a local job): each stops its step."""
        with self._lock:
            self._cancelled = True
            jobs = list(self._jobs)
        for job in jobs:
            try:
                process = getattr(job, "_process", None)  # a local job: its controller process
                if process is not None:
                    # SIGTERM, which the controller passes on to the job (its `cancel` sends
                    # SIGINT, whose traceback would land in this build's terminal)
                    process.send_signal(signal.SIGTERM)
                else:
                    job.cancel(check=False)
            except Exception:  # noqa: BLE001 (a job that already ended)
                pass


class RayExecutor:
    """Each step is one Ray task on a cluster at `address` (`ray://HOST:10001` through Ray
    Client, `HOST:6379`, `auto`; None: RAY_ADDRESS, else a running local cluster, else a new
    one), asking for the step's GPUs, CPUs and memory."""

    def __init__(self, address: str | None = None):
        self.ray = _need("ray", "ray")
        self.address = address
        self._refs: set = set()
        self._lock = threading.Lock()
        self._cancelled = False
        self._remote = None

    def connect(self):
        """Join the cluster (once); a cluster that cannot be reached is an ExecutorError."""
        with self._lock:
            if self._remote is None:
                where = self.address or os.environ.get("RAY_ADDRESS") or ""
                _probe(where)  # Ray itself waits minutes for an address nobody answers at
                if not self.ray.is_initialized():
                    try:
                        self.ray.init(address=self.address, log_to_driver=False)
                    except (ConnectionError, ValueError, RuntimeError) as exc:
                        raise ExecutorError(f"cannot reach the Ray cluster at {where or 'this machine'}: "
                                            f"{exc}") from None
                self._remote = self.ray.remote(run_step)
            return self._remote

    def options(self, task: Task) -> dict:
        r = Resources.of(task)
        if r.nodes > 1:
            raise ExecutorError(f"step {task.step} asks for {r.nodes} nodes; the Ray executor runs a "
                                "step on one node (use --executor slurm for multi-node training)")
        opts: dict = {"name": task.step, "num_cpus": r.cpus or 1, "num_gpus": r.gpus, "max_retries": 0}
        if r.memory:
            opts["memory"] = r.memory
        return opts

    def run(self, task: Task) -> Finished:
        remote = self.connect()
        task.log.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._cancelled:
                return Finished(-signal.SIGTERM, cancelled=True, log=task.log)
            ref = remote.options(**self.options(task)).remote(task.command(), step_env(task), str(task.log))
            self._refs.add(ref)
        try:
            status = self.ray.get(ref)
        except self.ray.exceptions.TaskCancelledError:
            return Finished(-signal.SIGTERM, log_tail(task.log), cancelled=True, log=task.log)
        except self.ray.exceptions.RayError as exc:
            return _ended_without_status(task, self._cancelled, f"{type(exc).__name__}: {exc}"[-2000:])
        finally:
            with self._lock:
                self._refs.discard(ref)
        return Finished(status, log_tail(task.log), cancelled=self._cancelled, log=task.log)

    def cancel(self) -> None:
        """Cancel every running task: Ray interrupts it, and `run_step` stops the step."""
        with self._lock:
            self._cancelled = True
            refs = list(self._refs)
        for ref in refs:
            try:
                self.ray.cancel(ref, recursive=True)
            except Exception:  # noqa: BLE001 (a task that already ended)
                pass


def _probe(address: str, seconds: float = 5.0) -> None:
    """Whether something listens at a Ray address's HOST:PORT (`auto` and "" are not probed)."""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


EXECUTORS = ("local", "submitit", "slurm", "ray")


def make_executor(spec: str, store_root: Path, connect: bool = False):
    """The executor `--executor SPEC` names: `local`, `submitit` (Slurm when there is one, else
    submitit's local executor), `submitit:local`, `slurm`, `ray`, `ray:ADDRESS` or `ray://HOST:PORT`.
    `connect`: join a Ray cluster now, so that one that cannot be reached is said before building."""
    from .executor import LocalExecutor

    name, _, arg = spec.partition(":")
    if name == "local" and not arg:
        return LocalExecutor()
    if name in ("submitit", "slurm"):
        cluster = "slurm" if name == "slurm" else (arg or None)
        if cluster not in (None, "slurm", "local"):
            raise ExecutorError(f"unknown submitit cluster {arg!r}: submitit:local or submitit:slurm")
        if connect and cluster == "slurm" and shutil.which("sbatch") is None:
            raise ExecutorError("no `sbatch` here: build with --executor slurm where Slurm's commands "
                                "are (a login node), or use --executor submitit:local")
        return SubmititExecutor(store_root / "submitit", cluster)
    if name == "ray":
        ray = RayExecutor(spec if arg.startswith("//") else (arg or None))
        if connect:
            ray.connect()
        return ray
    raise ExecutorError(f"unknown executor {spec!r}: one of local, submitit, submitit:local, slurm, "
                        "ray, ray:ADDRESS")

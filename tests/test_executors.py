"""Steps run on another worker: submitit's local executor (what runs on Slurm, without Slurm) and
a real local Ray cluster. Same outputs as a local build, cancellation, failures with their log."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from formula.runtime.cluster import ExecutorError, RayExecutor, SubmititExecutor, make_executor
from formula.runtime.executor import Task

submitit = pytest.importorskip("submitit")
ray = pytest.importorskip("ray")

STEPS = ["corpus.sessions", "model.tiny", "tokenizer.tiny", "tokenize.sessions.tiny", "train.lm"]


@pytest.fixture(scope="module")
def ray_address():
    """A real Ray cluster on this machine; builds connect to it as other drivers would."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The example up to a two-step `lm` stage, built by the local executor: (project, store)."""
    tmp = tmp_path_factory.mktemp("executors")
    project, store = tmp / "p", tmp / "store"
    project.mkdir()
    for name in ("tiny.formula", "data", "evals"):
        src = ROOT / "examples" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    build(project, store, "local")
    return project, store


def build(project, store, executor, *args, check=True, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("FORMULA_STEPS", "FORMULA_HOME")}
    e.update(FORMULA_HOME=str(store), NO_COLOR="1", **(env or {}))
    r = subprocess.run([sys.executable, "-m", "formula.cli", "build", "tiny.formula", "stage.lm.max_steps=2",
                        "--plain", "-j", "2", "--only", "train.lm", "--executor", executor, *args],
                       cwd=project, env=e, capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def outputs(store) -> dict[str, str]:
    latest = json.loads(next((store / "refs").glob("*.json")).read_text())
    return {step: json.loads(next((store / "actions").glob(f"*/{key}.json")).read_text())["output"]
            for step, key in latest["steps"].items()}


def test_training_on_submitit_gives_the_local_digests(built):
    project, store = built
    local = outputs(store)
    assert set(local) == set(STEPS)
    r = build(project, store, "submitit:local", "--force", "train.lm")
    assert "1 built, 4 cached" in r.stderr
    assert outputs(store) == local
    assert list((store / "submitit").glob("*_log.out"))  # the jobs ran through submitit


def test_steps_on_a_ray_cluster_give_the_local_digests(built, ray_address):
    project, store = built
    local = outputs(store)
    r = build(project, store, f"ray:{ray_address}", "--force", "corpus.sessions", "--force", "tokenizer.tiny")
    assert "2 built, 3 cached" in r.stderr
    assert outputs(store) == local


# --- the executors themselves, on stand-in steps ----------------------------------------------

SLEEPER = """import os, pathlib, time
pathlib.Path(os.environ["PIDFILE"]).write_text(str(os.getpid()))
print("started", flush=True)
time.sleep(120)
"""
FAILER = """import sys
print("some progress")
print("boom on purpose", file=sys.stderr)
sys.exit(3)
"""


def task(tmp_path: Path, source: str, name: str) -> Task:
    (tmp_path / f"{name}.py").write_text(source)
    return Task(name, name, tmp_path, "step", tmp_path / "logs" / f"{name}.log",
                {"PYTHONPATH": str(tmp_path), "PIDFILE": str(tmp_path / "pid")})


def executors(tmp_path, ray_address):
    return {"submitit": lambda: SubmititExecutor(tmp_path / "jobs", "local", poll_seconds=0.1),
            "ray": lambda: RayExecutor(ray_address)}


@pytest.mark.parametrize("which", ["submitit", "ray"])
def test_a_failing_step_reports_its_status_and_log(tmp_path, ray_address, which):
    t = task(tmp_path, FAILER, "failer")
    finished = executors(tmp_path, ray_address)[which]().run(t)
    assert finished.status == 3 and not finished.cancelled
    assert b"boom on purpose" in finished.tail and b"some progress" in finished.tail
    assert "boom on purpose" in t.log.read_text()  # the store's log holds it, as for a local step


@pytest.mark.parametrize("which", ["submitit", "ray"])
def test_cancel_stops_the_step(tmp_path, ray_address, which):
    t = task(tmp_path, SLEEPER, "sleeper")
    executor = executors(tmp_path, ray_address)[which]()
    result = {}
    runner = threading.Thread(target=lambda: result.update(f=executor.run(t)))
    runner.start()
    pidfile = tmp_path / "pid"
    deadline = time.time() + 60
    while not pidfile.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert pidfile.exists(), "the step never started"
    pid = int(pidfile.read_text())
    started = time.time()
    executor.cancel()
    runner.join(30)
    assert not runner.is_alive()
    assert result["f"].cancelled and result["f"].status != 0
    assert time.time() - started < 25
    deadline = time.time() + 15
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "the step's process outlived the cancelled job"
    assert "started" in t.log.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# --- choosing one -------------------------------------------------------------------------------


def test_slurm_parameters_come_from_the_step_resources(tmp_path):
    t = Task("train.sft", "m", tmp_path, "step", tmp_path / "log", resources={
        "gpus": 2, "cpus": 16, "memory": 64 * 1024**3, "time": 240, "partition": "gpu", "nodes": 2})
    assert SubmititExecutor(tmp_path, "local").parameters(t) == {
        "name": "formula-train.sft", "tasks_per_node": 1, "nodes": 2, "gpus_per_node": 2,
        "cpus_per_task": 16, "mem_gb": 64, "timeout_min": 240, "slurm_partition": "gpu"}


def test_ray_options_come_from_the_step_resources(tmp_path, ray_address):
    t = Task("train.sft", "m", tmp_path, "step", tmp_path / "log",
             resources={"gpus": 1, "memory": 8 * 1024**3})
    assert RayExecutor(ray_address).options(t) == {"name": "train.sft", "num_cpus": 1, "num_gpus": 1,
                                                   "max_retries": 0, "memory": 8 * 1024**3}
    with pytest.raises(ExecutorError, match="one node"):
        RayExecutor(ray_address).options(Task("s", "m", tmp_path, "step", tmp_path / "log",
                                              resources={"nodes": 2}))


def test_executor_names_and_missing_extras(tmp_path, monkeypatch):
    assert type(make_executor("local", tmp_path)).__name__ == "LocalExecutor"
    assert make_executor("slurm", tmp_path).cluster == "slurm"
    if shutil.which("sbatch") is None:
        with pytest.raises(ExecutorError, match="no `sbatch` here"):
            make_executor("slurm", tmp_path, connect=True)
    assert make_executor("submitit:local", tmp_path).cluster == "local"
    assert make_executor("ray://head:10001", tmp_path).address == "ray://head:10001"
    assert make_executor("ray:10.0.0.1:6379", tmp_path).address == "10.0.0.1:6379"
    assert make_executor("ray", tmp_path).address is None
    with pytest.raises(ExecutorError, match="unknown executor"):
        make_executor("kubernetes", tmp_path)
    with pytest.raises(ExecutorError, match="cannot reach the Ray cluster at 127.0.0.1:9"):
        make_executor("ray:127.0.0.1:9", tmp_path, connect=True)  # nothing listens there
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(ExecutorError, match=r"pip install 'formula\[ray\]'"):
        make_executor("ray", tmp_path)
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ExecutorError, match=r"pip install 'formula\[slurm\]'"):
        make_executor("slurm", tmp_path)


def test_a_failing_step_on_submitit_is_summarized_as_a_local_one(tmp_path):
    from test_build import Project, steps_of

    project = Project(tmp_path)
    r = project.build("--executor", "submitit:local", env={"FAKE_FAIL_TRAIN": "1"}, check=False)
    assert r.returncode == 1
    assert "step train.sft failed: exit status 4" in r.stderr
    assert "fake train step failing on purpose" in r.stderr  # the log's last lines, as locally
    assert "run it alone: python -m fake_steps.train --config-dir" in r.stderr
    assert {"corpus.sessions", "model.base", "tokenize.sessions.base"} <= steps_of(project.ran())
    project.build("--executor", "submitit:local")  # fixed: the rest builds, the rest stays cached
    assert steps_of(project.ran()) == {"train.sft", "assemble.merged", "gguf.gguf.q8_0", "eval.gate"}


def test_an_interrupted_build_on_submitit_stops_its_job_and_step(tmp_path):
    import signal

    from test_build import Project
    from test_faults import _start, _wait_for

    project = Project(tmp_path)
    pidfile = tmp_path / "train.pid"
    proc, seen = _start(project, {"FORMULA_EXECUTOR": "submitit:local", "FAKE_SLEEP_TRAIN": "60",
                                  "FAKE_PIDFILE_TRAIN": str(pidfile)})
    assert _wait_for(pidfile.exists)
    pid = int(pidfile.read_text())
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the build cancels its jobs
    err = "".join(seen) + proc.communicate(timeout=90)[1]
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "interrupted  train.sft  (interrupted)" in err, err
    assert "not built: assemble.merged, gguf.gguf.q8_0, eval.gate" in err
    assert _wait_for(lambda: not _alive(pid), 20), "the step outlived its cancelled job"

"""Faults, on the stand-in steps (tests/fake_steps) unless said otherwise: damaged store objects,
--force, a full disk, a read-only store, interrupted builds and killed steps.

What must hold under every fault: no traceback, a summary, one clear line naming the step (and
the file or filesystem), and nothing half-written ever used. The kill suite on the real steps is
in test_e2e.py; the last test here retrains for real (same seed, same output digest).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import copy_example, run_formula
from test_build import ALL, Project, steps_of


@pytest.fixture
def project(tmp_path):
    p = Project(tmp_path)
    p.build()
    assert steps_of(p.ran()) == set(ALL)
    return p


def store_of(project) -> Path:
    home = project.env.get("FORMULA_HOME")
    return Path(home) if home else project.root / ".formula"


def latest(project) -> dict:
    return json.loads(next((store_of(project) / "refs").glob("*.json")).read_text())


def record(project, step) -> dict:
    key = latest(project)["steps"][step]
    return json.loads(next((store_of(project) / "actions").glob(f"*/{key}.json")).read_text())


def object_of(project, step) -> Path:
    digest = record(project, step)["output"]
    return store_of(project) / "objects" / digest[:2] / digest


def clean(r):
    assert "Traceback" not in r.stderr and "Error:" not in r.stderr.replace("error:", ""), r.stderr
    return r


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    with open(path, "r+b") as fh:  # in place: same inode, same size
        fh.write(data)


def truncate(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def delete(path: Path) -> None:
    path.unlink()


def add(path: Path) -> None:
    path.with_name("stray.bin").write_bytes(b"not built by the step")


# --- integrity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", [flip, truncate, delete, add])
def test_every_damaged_object_is_named_moved_aside_and_rebuilt(project, fault):
    """Every step's stored output damaged at once: each one is found, by step and file, moved
    to quarantine, and built again with the same digest (so the build ends as it was)."""
    before = {step: record(project, step)["output"] for step in ALL}
    time.sleep(0.02)  # past the mtime tick of the build that stored them
    for step in ALL:
        fault(object_of(project, step) / "result.json")
    r = clean(project.build())
    assert steps_of(project.ran()) == set(ALL)  # 100%: every damaged output was rebuilt
    for step in ALL:
        assert f"damaged  {step}: " in r.stderr, step
        assert f"note: {step}: its stored output was damaged (" in r.stderr
    what = {"flip": "result.json: content differs", "truncate": "result.json: 3", "delete": "result.json: missing",
            "add": "stray.bin: not in the sealed listing"}[fault.__name__]
    assert what in r.stderr
    assert {step: record(project, step)["output"] for step in ALL} == before
    quarantined = list((store_of(project) / "quarantine").glob("*.json"))
    assert len(quarantined) == len(set(before.values()))
    note = json.loads(quarantined[0].read_text())
    assert note["steps"] and note["problems"][0]["file"] in ("result.json", "stray.bin")
    assert "clean" in project.formula_cmd("verify").stderr
    assert "7 cached" in project.build().stderr


def test_plan_says_a_damaged_output_will_be_rebuilt(project):
    truncate(object_of(project, "gguf.gguf.q8_0") / "result.json")
    plan = project.formula_cmd("plan", "small.formula").stdout
    line = next(l for l in plan.splitlines() if l.startswith("will run  gguf.gguf.q8_0"))
    assert "its stored output is damaged (result.json: " in line
    assert "cached    train.sft" in plan


def test_a_change_that_keeps_the_stat_is_found_by_verify_and_replaced_by_force(project):
    """The build trusts a file whose size, mtime and inode are as sealed (the cheap check);
    `verify` rehashes everything, and `--force` replaces the stored copy, damaged or not."""
    path = object_of(project, "train.sft") / "result.json"
    st = path.stat()
    flip(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "7 cached" in project.build().stderr
    r = project.formula_cmd("verify", check=False)
    assert r.returncode == 1 and "corrupt: output of train.sft" in r.stderr
    assert "result.json: content differs" in r.stderr
    r = clean(project.build("--force", "train.sft"))
    assert steps_of(project.ran()) == {"train.sft"}
    assert "note: train.sft: the stored copy it replaced was damaged (result.json: content differs" in r.stderr
    assert "clean" in project.formula_cmd("verify").stderr


def test_force_replaces_a_whole_stored_copy_too(project):
    old = object_of(project, "train.sft")
    inode = (old / "result.json").stat().st_ino
    r = clean(project.build("--force", "train.sft"))
    assert steps_of(project.ran()) == {"train.sft"} and "built  train.sft" in r.stderr
    new = object_of(project, "train.sft")
    assert new == old and (new / "result.json").stat().st_ino != inode  # the fresh copy is stored
    assert "clean" in project.formula_cmd("verify").stderr


def test_run_facts_live_in_the_record_not_in_the_output(project):
    first = record(project, "train.sft")
    r = clean(project.build("--force", "train.sft"))
    second = record(project, "train.sft")
    assert steps_of(project.ran()) == {"train.sft"}  # same output, so its dependents stay cached
    assert first["output"] == second["output"]
    assert first["run"]["pid"] != second["run"]["pid"] and "finished_at" in second["run"]
    show = project.formula_cmd("show", "small:train.sft").stdout
    assert "run (facts of this run, not part of the output)" in show and "finished_at" in show
    assert "6 cached" in r.stderr


# --- interrupts and kills ----------------------------------------------------------------------

def _start(project, env):
    proc = subprocess.Popen([sys.executable, "-m", "formula.cli", "build", "small.formula", "--plain"],
                            cwd=project.root, env={**project.env, **env}, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "running  train.sft" in line:
            break
    return proc, seen


def _wait_for(predicate, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_build_says_so_and_what_it_kept(project, sig):
    project.edit("var lr: float = 1e-4", "var lr: float = 6e-4")
    project.runs.unlink(missing_ok=True)
    proc, seen = _start(project, {"FAKE_SLEEP_TRAIN": "30"})
    work = store_of(project) / "work"
    assert _wait_for(lambda: any(work.glob("*/progress")))  # it has checkpointed
    proc.send_signal(sig)  # to the build alone, as a terminal's Ctrl-C reaches it (steps run in their own sessions)
    err = "".join(seen) + proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and "exit status -15" not in err, err
    assert f"interrupted  train.sft  (interrupted)" in err
    assert f"build interrupted ({sig.name})" in err and "nothing half-written was stored" in err
    assert "stopped train.sft: kept its work folder (1 files" in err and "resumes from" in err
    assert "not built: assemble.merged, gguf.gguf.q8_0, eval.gate" in err
    assert not any((store_of(project) / "tmp").glob("*/out"))
    r = clean(project.build())
    assert steps_of(project.ran()) == {"train.sft", "assemble.merged", "gguf.gguf.q8_0", "eval.gate"}
    assert json.loads((object_of(project, "train.sft") / "result.json").read_text())["resumed_from"] > 0


def test_a_step_killed_from_outside_says_by_which_signal(project, tmp_path):
    project.edit("var lr: float = 1e-4", "var lr: float = 8e-4")
    pidfile = tmp_path / "train.pid"
    proc, seen = _start(project, {"FAKE_SLEEP_TRAIN": "30", "FAKE_PIDFILE_TRAIN": str(pidfile)})
    assert _wait_for(pidfile.exists)
    time.sleep(0.2)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)  # as the out-of-memory killer would
    err = "".join(seen) + proc.communicate(timeout=60)[1]
    assert proc.returncode == 1
    assert "Traceback" not in err and "exit status -9" not in err, err
    assert "step train.sft failed: killed by SIGKILL (signal 9), not by this build" in err
    assert "is empty: the step printed nothing before it ended" in err
    assert "build failed:" in err and "skipped" in err


# --- a full disk and a read-only store -----------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs mounted for the test (root only: elsewhere this is skipped)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def project_on_small_fs(tmp_path, small_fs):
    (tmp_path / "p").mkdir()
    p = Project(tmp_path / "p")
    p.env["FORMULA_HOME"] = str(small_fs / "store")
    p.build()
    return p


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill a filesystem up to `leave` bytes free."""
    filler = fs / "filler.bin"
    with open(filler, "ab") as fh:
        while True:
            st = os.statvfs(fs)
            free = st.f_bavail * st.f_frsize - leave
            if free <= 0:
                break
            try:
                fh.write(b"\0" * min(free, 1 << 20))
                fh.flush()
            except OSError:
                break
    return filler


def test_a_step_that_fills_the_disk(project_on_small_fs, small_fs):
    """The step writes until the disk is full: one line naming the step and the filesystem,
    its half-written output removed, its log whole (every line, then the reason), a summary,
    no traceback, and nothing cached under its key."""
    project = project_on_small_fs
    project.edit("var lr: float = 1e-4", "var lr: float = 4e-4")
    r = clean(project.build(env={"FAKE_FILL_DISK_TRAIN": "output", "FAKE_LOG_LINES_TRAIN": "400"}, check=False))
    assert r.returncode == 1
    assert f"step train.sft failed: disk full on {small_fs} (tmpfs, 0 B free of 4.0 MiB); exit status 3" in r.stderr
    assert "its half-written output was removed" in r.stderr
    assert "error: disk full" in r.stderr  # the step's own line, from its log tail
    assert "build failed:" in r.stderr and "3 skipped" in r.stderr
    log = Path(next(l.split("last lines of ")[1] for l in r.stderr.splitlines() if "last lines of" in l))
    text = log.read_text()
    assert "log line 00000" in text and "log line 00399" in text and len(text) > 8192
    assert "[formula] step train.sft: disk full on" in text.splitlines()[-1]
    assert not any((small_fs / "store" / "tmp").glob("*/out"))
    r = clean(project.build())  # space is back: the step builds, nothing half-written was cached
    assert steps_of(project.ran()) == {"train.sft", "assemble.merged", "gguf.gguf.q8_0", "eval.gate"}
    assert "clean" in project.formula_cmd("verify").stderr


def test_a_step_that_fills_the_disk_with_what_it_keeps(project_on_small_fs, small_fs):
    """The step fills the disk with checkpoints (kept for a resume), so the disk stays full: the
    end of what it printed comes from the build's memory, the stat memo cannot be saved (a
    warning, not an uncaught sqlite3 error), and the summary is printed."""
    project = project_on_small_fs
    for i in range(200):  # new data files, for the stat memo to remember at the end
        f = project.root / "data" / f"added-{i:04d}.jsonl"
        f.write_text('{"messages": [{"role": "user", "content": "new"}]}\n')
        os.utime(f, (time.time() - 10, time.time() - 10))  # old enough to be remembered
    r = clean(project.build(env={"FAKE_FILL_DISK_TRAIN": "work", "FAKE_LOG_LINES_TRAIN": "100",
                                 "FAKE_LOG_LINES_AFTER_TRAIN": "1000"}, check=False))
    assert r.returncode == 1
    assert f"step train.sft failed: disk full on {small_fs} (tmpfs, 0 B free of 4.0 MiB); exit status 3" in r.stderr
    assert "its log could not be written whole (No space left on device: " in r.stderr, r.stderr[-3000:]
    assert "--- last lines of what train.sft printed (its log " in r.stderr
    assert "after the disk filled 00999" in r.stderr and "error: disk full" in r.stderr
    assert "warning: the stat memo could not be saved (database or disk is full)" in r.stderr
    assert "build failed:" in r.stderr
    for filler in (small_fs / "store" / "work").glob("*/filler.bin"):
        filler.unlink()  # the user makes room
    r = clean(project.build())
    assert "train.sft" in steps_of(project.ran())


def test_a_disk_already_full(project_on_small_fs, small_fs):
    """No space at all: the step cannot even be prepared; the stat memo cannot be saved. Both
    are said in one line each; the summary is printed; the build fails without a traceback."""
    project = project_on_small_fs
    for i in range(400):  # new files for the stat memo to remember (more than its journal holds)
        f = project.root / "data" / f"added-{i:04d}-{'x' * 100}.jsonl"
        f.write_text('{"messages": [{"role": "user", "content": "new"}]}\n')
        os.utime(f, (time.time() - 10, time.time() - 10))  # old enough to be remembered
    filler = fill(small_fs)
    r = clean(project.build(check=False))
    assert r.returncode == 1
    assert "step corpus.sessions failed: " in r.stderr and f"on {small_fs} (tmpfs, 0 B free of 4.0 MiB)" in r.stderr
    assert "warning: the stat memo " in r.stderr and "what this build hashed is not remembered" in r.stderr
    assert "warning: this build could not be recorded as the formula's latest: disk full: " in r.stderr
    assert "build failed:" in r.stderr
    filler.unlink()
    r = clean(project.build())
    assert "corpus.sessions" in steps_of(project.ran())


def test_a_read_only_store(project_on_small_fs, small_fs):
    """A no-op build reads a read-only store fine (and says the build could not be recorded);
    a step that has to run fails in one line naming the filesystem."""
    project = project_on_small_fs
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    r = clean(project.build())
    assert "7 cached" in r.stderr and "build ok" in r.stderr
    assert "warning: this build could not be recorded as the formula's latest: read-only filesystem" in r.stderr
    project.edit("var lr: float = 1e-4", "var lr: float = 2e-4")
    r = clean(project.build(check=False))
    assert r.returncode == 1
    assert f"step train.sft failed: cannot write the store: read-only filesystem: " in r.stderr
    assert f"on {small_fs} (tmpfs, " in r.stderr and "build failed:" in r.stderr
    assert project.ran() == set()
    subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    clean(project.build())
    assert steps_of(project.ran()) == {"train.sft", "assemble.merged", "gguf.gguf.q8_0", "eval.gate"}


# --- the real train step -------------------------------------------------------------------------

def test_a_forced_retrain_with_the_same_seed_keeps_its_output_and_a_resumed_one_too(tmp_path):
    """Train's output holds nothing of one run (no wall times): rerunning it with the same seed
    gives the same digest, so the steps after it stay cached; a run killed after a checkpoint
    and resumed gives the same digest again, with the loss of the whole run."""
    pytest.importorskip("trl")
    project = copy_example(tmp_path / "p")
    store = tmp_path / "store"
    args = ("build", "tiny.formula", "--plain", "--only", "train.lm", "stage.lm.max_steps=8",
            "stage.lm.save_every=4", "stage.lm.log_every=3")
    run_formula(project, store, *args, "-j", "2")

    def lm():
        show = run_formula(project, store, "show", "tiny:train.lm").stdout
        key = next(l.split()[1] for l in show.splitlines() if l.startswith("key"))
        return json.loads(next(store.glob(f"actions/*/{key}.json")).read_text())

    first = lm()
    r = run_formula(project, store, *args, "--force", "train.lm")
    assert "built  train.lm" in r.stderr and "cached  tokenize.sessions.tiny" in r.stderr
    second = lm()
    assert second["output"] == first["output"], "a rerun with the same seed changed the output"
    assert second["run"]["seconds"] and "seconds" not in second["metrics"]

    env = {**os.environ, "FORMULA_HOME": str(store), "NO_COLOR": "1"}
    env.pop("FORMULA_STEPS", None)
    proc = subprocess.Popen([sys.executable, "-m", "formula.cli", *args, "--force", "train.lm"], cwd=project,
                            env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    work = store / "work" / first["key"] / "checkpoints"
    assert _wait_for(lambda: (work / "checkpoint-4" / "formula_loss.json").is_file(), 300), "no checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_formula(project, store, *args, "--force", "train.lm")
    third = lm()
    # from checkpoint-4, or from the last one when the kill landed after training, before saving
    assert third["run"]["resumed"] is True and third["run"]["resumed_from_step"] in (4, 8)
    assert third["metrics"]["train_loss"] == first["metrics"]["train_loss"]  # the whole run's
    assert third["output"] == first["output"], "a resumed run gave another output"

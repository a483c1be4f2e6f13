"""The example end to end on the real steps: incremental rebuilds and recovery from kills.

Works on a copy of the session's built example (project and store), so the copy's first build
reruns only the corpus step (its config names the data folder's new place) and every other step
is reached through early cutoff."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_formula


@pytest.fixture(scope="module")
def copy(built_example, tmp_path_factory):
    project, store = built_example
    tmp = tmp_path_factory.mktemp("e2e")
    shutil.copytree(project, tmp / "p")
    shutil.copytree(store, tmp / "store")
    run_formula(tmp / "p", tmp / "store", "build", "tiny.formula", "--plain")
    return tmp / "p", tmp / "store"


def build(project, store, *args, check=True):
    return run_formula(project, store, "build", "tiny.formula", "--plain", "-j", "2", *args, check=check)


def ran(result) -> set[str]:
    return {l.split()[1] for l in result.stderr.splitlines() if l.strip().startswith("built ")}


def will_run(project, store, *args) -> dict[str, str]:
    out = run_formula(project, store, "plan", "tiny.formula", *args).stdout
    rows, last = {}, None
    for line in out.splitlines():
        if line.startswith("will run"):
            step, _, reason = line[len("will run"):].strip().partition(" ")
            rows[step], last = reason.strip(), step
        elif line.startswith(" ") and last:
            rows[last] += " " + line.strip()
        else:
            last = None
    return rows


def test_a_second_build_does_nothing(copy):
    project, store = copy
    started = time.perf_counter()
    r = build(project, store)
    seconds = time.perf_counter() - started
    print(f"\nno-op rebuild: {seconds:.2f}s including interpreter start")
    assert "build ok: 12 cached" in r.stderr and not ran(r)


def test_an_eval_threshold_reruns_only_the_eval(copy):
    project, store = copy
    f = project / "tiny.formula"
    text = f.read_text()
    f.write_text(text.replace("pass_rate >= 0.5\n  check prompts", "pass_rate >= 0.6\n  check prompts"))
    try:
        plan = will_run(project, store)
        assert set(plan) == {"eval.gate"} and "config" in plan["eval.gate"], plan
        assert ran(build(project, store)) == {"eval.gate"}
    finally:
        f.write_text(text)


def test_the_sft_learning_rate_reruns_sft_and_after_but_not_tokenization(copy):
    project, store = copy
    plan = will_run(project, store, "var.lr=3e-3")
    after = {"train.sft", "train.dpo", "assemble.tiny_chat", "gguf.gguf.f16", "gguf.gguf.q8_0", "eval.gate"}
    assert set(plan) == after, plan
    assert "lr" in plan["train.sft"]
    assert ran(build(project, store, "var.lr=3e-3")) == after


def test_one_more_transcript_reruns_from_the_corpus(copy):
    project, store = copy
    sessions = sorted((project / "data" / "projects").rglob("*.jsonl"))
    new = sessions[0].with_name("added-session.jsonl")
    new.write_text(sessions[0].read_text().replace(sessions[0].stem, "added-session"))
    plan = will_run(project, store)
    assert "corpus.sessions" in plan and "added-session.jsonl" in plan["corpus.sessions"], plan
    r = build(project, store)
    assert "corpus.sessions" in ran(r)
    assert "build ok" in r.stderr


KILL_AT = {  # step → seconds into the step within which the kill lands (its usual length)
    "corpus.sessions": 1.5, "pairs.outcomes": 1.0, "tokenizer.tiny": 1.5, "model.tiny": 4.0,
    "tokenize.sessions.tiny": 4.0, "train.lm": 15.0, "assemble.tiny_chat": 4.0,
    "gguf.gguf.q8_0": 1.5, "gguf.gguf.f16": 1.0, "eval.gate": 5.0,
}


def _kill_during(project, store, step, delay, *args):
    env = {**os.environ, "FORMULA_HOME": str(store), "NO_COLOR": "1"}
    env.pop("FORMULA_STEPS", None)
    proc = subprocess.Popen([sys.executable, "-m", "formula.cli", "build", "tiny.formula", "--plain", *args],
                            cwd=project, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    for line in proc.stderr:  # wait until the step runs, then kill the build and its steps
        if line.split() == ["running", step]:
            break
        assert time.time() < deadline
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_kills_in_every_step_kind_always_recover(copy):
    project, store = copy
    rng = random.Random(20261124)
    kills = 0
    for step, length in KILL_AT.items():  # a forced rerun of each kind, killed at a random moment
        _kill_during(project, store, step, rng.uniform(0, length), "--force", step)
        kills += 1
        assert "clean" in run_formula(project, store, "verify").stderr
    # Train steps killed in fresh runs (a learning rate not built before): the next build must
    # finish them, from their checkpoint when one was written before the kill.
    for lr in ("2.5e-3", "1.5e-3"):
        args = (f"var.lr={lr}", "stage.sft.save_every=8")
        explained = run_formula(project, store, "explain", "tiny.formula", "train.sft", *args).stdout
        key = explained.split("(key ")[1][:16]
        _kill_during(project, store, "train.sft", rng.uniform(2, 8), *args)
        kills += 1
        checkpointed = any((p / "trainer_state.json").is_file()
                           for p in (store / "work").glob(f"{key}*/checkpoints/checkpoint-*"))
        r = build(project, store, *args)
        assert "build ok" in r.stderr
        out = run_formula(project, store, "show", "tiny:train.sft").stdout
        key = next(l.split()[1] for l in out.splitlines() if l.startswith("key"))
        facts = json.loads(next(store.glob(f"actions/*/{key}.json")).read_text())["run"]  # not in the output
        print(f"\nsft killed at lr {lr}: checkpoint before the kill {checkpointed}, resumed {facts['resumed']}")
        assert facts["resumed"] is checkpointed
    assert kills >= 10
    assert "build ok: 12 cached" in build(project, store).stderr
    assert "clean" in run_formula(project, store, "verify").stderr
    assert not any((store / "tmp").iterdir()), "temporary folders left behind"

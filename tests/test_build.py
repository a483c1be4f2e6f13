"""The build system on cheap stand-in steps (tests/fake_steps): what reruns, and why.

Each test builds a small project in a temporary folder through the real CLI, with
FORMULA_STEPS pointing at the stand-ins; FAKE_RUNS_LOG records which steps really ran.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

FORMULA = '''formula small {
  description = "six steps and an eval"
}

var lr: float = 1e-4

model base {
  from = hub("Qwen/Qwen2.5-0.5B-Instruct")
}

corpus sessions {
  source  = transcripts("data/*.jsonl", format = chat)
  holdout = 10%
}

stage sft {
  method    = sft
  model     = base
  data      = sessions
  lr        = lr
  log_every = 5
}

assemble merged {
  from = sft
}

export gguf {
  from   = merged
  quants = [q8_0]
}

eval gate {
  on = gguf.q8_0
  check perplexity(sessions.holdout) <= 20
}
'''
ALL = ["corpus.sessions", "model.base", "tokenize.sessions.base", "train.sft", "assemble.merged",
       "gguf.gguf.q8_0", "eval.gate"]


class Project:
    def __init__(self, root: Path):
        self.root = root
        self.runs = root / "runs.log"
        (root / "data").mkdir()
        for i in range(3):
            (root / "data" / f"s{i}.jsonl").write_text(json.dumps({"messages": [
                {"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "hello"}]}) + "\n")
        (root / "pyproject.toml").write_text("")
        self.formula = root / "small.formula"
        self.formula.write_text(FORMULA)
        # Its hub model pinned as `formula lock` pins one, so no build reaches for the network.
        (root / "small.formula.lock").write_text(json.dumps({"format": 1, "models": [{
            "repo": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "main", "commit": "0" * 40,
            "files": [{"name": "config.json"}, {"name": "model.safetensors"}]}]}))
        self.env = {**os.environ, "FORMULA_STEPS": "fake_steps", "PYTHONPATH": str(ROOT / "tests"),
                    "FAKE_RUNS_LOG": str(self.runs), "NO_COLOR": "1"}
        self.env.pop("FORMULA_HOME", None)

    def formula_cmd(self, *args, env=None, check=True):
        r = subprocess.run([sys.executable, "-m", "formula.cli", *args], cwd=self.root,
                           env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=300)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    def build(self, *args, **kw):
        self.runs.unlink(missing_ok=True)
        r = self.formula_cmd("build", "small.formula", "-j", "2", "--plain", *args, **kw)
        return r

    def ran(self) -> set[str]:
        if not self.runs.exists():
            return set()
        names = set()
        for line in self.runs.read_text().split():
            name, kind = line.split(":")
            names.add({"corpus": f"corpus.{name}", "model": f"model.{name}", "train": f"train.{name}",
                       "assemble": f"assemble.{name}", "eval": f"eval.{name}"}.get(kind, kind))
        return names

    def edit(self, old, new):
        self.formula.write_text(self.formula.read_text().replace(old, new))


def steps_of(ran: set[str]) -> set[str]:
    """Map the stand-ins' run log (which has names, not step ids) onto step names."""
    mapping = {"tokenize": "tokenize.sessions.base", "gguf": "gguf.gguf.q8_0"}
    return {mapping.get(r, r) for r in ran}


@pytest.fixture
def project(tmp_path):
    p = Project(tmp_path)
    p.build()
    assert steps_of(p.ran()) == set(ALL)
    return p


def test_second_build_does_nothing(project):
    r = project.build()
    assert project.ran() == set()
    assert "7 cached" in r.stderr


def test_changing_one_param_reruns_exactly_its_dependents(project):
    project.edit("var lr: float = 1e-4", "var lr: float = 3e-4")
    plan = project.formula_cmd("plan", "small.formula").stdout
    assert "will run  train.sft" in plan and "config `lr`: 0.0001 → 0.0003" in plan
    assert "cached    tokenize.sessions.base" in plan
    project.build()
    assert steps_of(project.ran()) == {"train.sft", "assemble.merged", "gguf.gguf.q8_0", "eval.gate"}


def test_early_cutoff_when_a_rerun_step_gives_the_same_output(project):
    project.edit("log_every = 5", "log_every = 7")  # the stand-in's output ignores it
    project.build()
    assert steps_of(project.ran()) == {"train.sft"}


def test_changing_a_data_file_reruns_from_the_corpus_on(project):
    (project.root / "data" / "s1.jsonl").write_text('{"messages": []}\n')
    plan = project.formula_cmd("plan", "small.formula").stdout
    assert "data `source0`" in plan and "1 changed (s1.jsonl)" in plan
    project.build()
    assert steps_of(project.ran()) == set(ALL) - {"model.base"}


def test_adding_a_data_file_is_a_change_too(project):
    (project.root / "data" / "s9.jsonl").write_text('{"messages": []}\n')
    assert "1 added (s9.jsonl)" in project.formula_cmd("plan", "small.formula").stdout


def test_touching_a_file_without_changing_it_reruns_nothing(project):
    f = project.root / "data" / "s0.jsonl"
    os.utime(f, (time.time() + 5, time.time() + 5))
    project.build()
    assert project.ran() == set()


def test_reverting_a_change_is_a_cache_hit(project):
    project.edit("var lr: float = 1e-4", "var lr: float = 3e-4")
    project.build()
    project.edit("var lr: float = 3e-4", "var lr: float = 1e-4")
    project.build()
    assert project.ran() == set()


def test_reformatting_or_reordering_the_formula_reruns_nothing(project):
    text = project.formula.read_text()
    blocks = text.split("\n\n")
    reordered = "\n\n".join(blocks[:2] + list(reversed(blocks[2:]))).replace("lr: float = 1e-4",
                                                                              "lr: float = 0.0001")
    project.formula.write_text("# reformatted\n" + reordered.replace("  ", "    "))
    project.build()
    assert project.ran() == set()


def test_command_line_override_and_sweep_share_upstream_steps(project):
    r = project.build("-m", "stage.sft.lr=1e-4,2e-4,3e-4")
    ran = project.runs.read_text().split()
    # the first value is the cached build; the other two rerun from training on, once each
    assert sorted(ran).count("sft:train") == 2
    assert not any(r.endswith(":corpus") or r.endswith(":tokenize") for r in ran)
    assert "[3/3] stage.sft.lr=0.0003" in r.stderr
    assert "warning" not in r.stderr


def test_only_and_force(project):
    project.edit("var lr: float = 1e-4", "var lr: float = 3e-4")
    project.build("--only", "train.sft")
    assert steps_of(project.ran()) == {"train.sft"}
    project.build("--force", "corpus.sessions")
    # a forced step whose output is unchanged does not drag its dependents along
    assert steps_of(project.ran()) == {"corpus.sessions", "assemble.merged", "gguf.gguf.q8_0", "eval.gate"}


def test_unknown_step_names_are_usage_errors(project):
    r = project.formula_cmd("build", "small.formula", "--only", "train.stf", check=False)
    assert r.returncode == 2 and "did you mean `train.sft`" in r.stderr


def test_a_bad_formula_builds_nothing_and_says_why(project):
    project.edit("lr        = lr", "lr        = lrr")
    r = project.formula_cmd("build", "small.formula", check=False)
    assert r.returncode == 1
    assert "error[undefined]" in r.stderr and "nothing was built" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_failing_step_shows_its_log_and_how_to_rerun_it(project):
    project.edit("var lr: float = 1e-4", "var lr: float = 5e-4")
    r = project.build(env={"FAKE_FAIL_TRAIN": "1"}, check=False)
    assert r.returncode == 1
    assert "step train.sft failed: exit status 4" in r.stderr
    assert "fake train step failing on purpose" in r.stderr
    assert "run it alone: python -m fake_steps.train --config-dir" in r.stderr
    assert "skipped" in r.stderr
    rerun = r.stderr.split("run it alone: ")[1].splitlines()[0].split()[1:]
    alone = subprocess.run([sys.executable, *rerun], cwd=project.root, env=project.env,
                           capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr  # the step runs alone from its Hydra config
    project.build()
    assert steps_of(project.ran()) == {"train.sft", "assemble.merged", "gguf.gguf.q8_0", "eval.gate"}


def test_a_step_that_writes_into_its_input_fails_and_the_input_stays_as_built(project):
    project.edit("var lr: float = 1e-4", "var lr: float = 5e-4")
    r = project.build(env={"FAKE_WRITE_INPUT_TRAIN": "1"}, check=False)
    assert r.returncode == 1
    assert "step train.sft failed: the step wrote into a stored input" in r.stderr
    assert "cache-1234.arrow (added)" in r.stderr
    assert "clean" in project.formula_cmd("verify").stderr  # the added file was taken out again
    project.build()


def test_sigkill_mid_step_then_the_next_build_reruns_only_that_step(project):
    project.edit("var lr: float = 1e-4", "var lr: float = 7e-4")
    proc = subprocess.Popen([sys.executable, "-m", "formula.cli", "build", "small.formula", "--plain"],
                            cwd=project.root, env={**project.env, "FAKE_SLEEP_TRAIN": "20"},
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stderr:
        if "running  train.sft" in line:
            break
    deadline = time.time() + 60  # until it has checkpointed (slow to start on a loaded machine)
    while time.time() < deadline and not list((project.root / ".formula" / "work").glob("*/progress")):
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert project.formula_cmd("verify").returncode == 0
    project.runs.unlink(missing_ok=True)
    project.build()
    assert steps_of(project.ran()) == {"train.sft", "assemble.merged", "gguf.gguf.q8_0", "eval.gate"}
    build = json.loads(next((project.root / ".formula" / "refs").glob("*.json")).read_text())
    out = next((project.root / ".formula" / "objects").glob(f"*/{_output(project, build['steps']['train.sft'])}"))
    assert json.loads((out / "result.json").read_text())["resumed_from"] > 0  # from its checkpoint
    assert "clean" in project.formula_cmd("verify").stderr
    assert not list((project.root / ".formula" / "tmp").iterdir())


def _output(project, key):
    return json.loads(next((project.root / ".formula" / "actions").glob(f"*/{key}.json")).read_text())["output"]


def test_two_concurrent_builds_give_one_result(project):
    project.edit("var lr: float = 1e-4", "var lr: float = 9e-4")
    env = {**project.env, "FAKE_SLEEP_TRAIN": "4"}
    project.runs.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "formula.cli", "build", "small.formula", "--plain"]
    first = subprocess.Popen(cmd, cwd=project.root, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in first.stderr:
        seen.append(line)
        if "running  train.sft" in line:
            break
    second = subprocess.Popen(cmd, cwd=project.root, env=env, stderr=subprocess.PIPE, text=True)
    err2 = second.communicate(timeout=120)[1]
    err1 = "".join(seen) + first.communicate(timeout=120)[1]
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert project.runs.read_text().split().count("sft:train") == 1  # built once
    assert "waiting  train.sft: locked by pid" in err2 and "train.sft of small.formula" in err2
    assert "reused  train.sft" in err2
    assert "clean" in project.formula_cmd("verify").stderr


def test_an_input_edited_while_its_step_runs_is_not_cached_under_the_old_key(project):
    (project.root / "data" / "s2.jsonl").write_text('{"messages": [{"role": "user", "content": "v2"}]}\n')
    proc = subprocess.Popen([sys.executable, "-m", "formula.cli", "build", "small.formula", "--plain"],
                            cwd=project.root, env={**project.env, "FAKE_SLEEP_CORPUS": "3"},
                            stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    (project.root / "data" / "s2.jsonl").write_text('{"messages": [{"role": "user", "content": "v3"}]}\n')
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 1
    assert "input changed while the step ran" in err
    project.build()
    assert "corpus.sessions" in steps_of(project.ran())  # built now, under the new content


def test_editing_a_step_module_reruns_that_kind(project, tmp_path):
    fake = tmp_path / "steps_copy"
    import shutil

    shutil.copytree(ROOT / "tests" / "fake_steps", fake / "fake_steps")
    env = {"PYTHONPATH": str(fake)}
    project.build(env=env)
    assert project.ran() == set()  # same code, other place: same key
    common = fake / "fake_steps" / "common.py"
    common.write_text(common.read_text() + "\n# a change in a helper every step imports\n")
    plan = project.formula_cmd("plan", "small.formula", env=env).stdout
    assert "its code changed" in plan


def test_ls_show_tag_gc(project):
    project.formula_cmd("tag", "v1", "small.formula")
    project.edit("var lr: float = 1e-4", "var lr: float = 2e-4")
    project.build()
    ls = project.formula_cmd("ls").stdout
    assert "small" in ls and "train.sft" in ls
    show = project.formula_cmd("show", "v1:train.sft").stdout
    assert "step     train.sft (train)" in show and "from model.base" in show and '"lr": 0.0001' in show
    assert "fake_metric" in show
    gc = project.formula_cmd("gc").stderr
    assert "removed 0 step records" in gc  # the tag keeps the old build
    (project.root / ".formula" / "tags" / "v1.json").unlink()
    gc = project.formula_cmd("gc").stderr
    assert "removed 4 step records" in gc
    assert "clean" in project.formula_cmd("verify").stderr


def test_verify_reports_corruption_by_step_and_file(project):
    record = json.loads(next((project.root / ".formula" / "actions").glob(
        f"*/{_key(project, 'train.sft')}.json")).read_text())
    obj = project.root / ".formula" / "objects" / record["output"][:2] / record["output"]
    (obj / "result.json").write_text("tampered")
    r = project.formula_cmd("verify", check=False)
    assert r.returncode == 1
    assert "corrupt: output of train.sft" in r.stderr and "result.json: 8 bytes" in r.stderr
    r = project.formula_cmd("verify", "--repair")
    assert "repaired: output of train.sft" in r.stderr and "moved to quarantine/" in r.stderr
    assert "clean" in project.formula_cmd("verify").stderr
    project.build()
    assert steps_of(project.ran()) == {"train.sft"}  # the same output again: early cutoff after it


def _key(project, step):
    build = json.loads(next((project.root / ".formula" / "refs").glob("*.json")).read_text())
    return build["steps"][step]


def test_graph_formats(project):
    dot = project.formula_cmd("graph", "small.formula").stdout
    assert '"train.sft" -> "assemble.merged"' in dot
    mermaid = project.formula_cmd("graph", "small.formula", "--format", "mermaid").stdout
    assert mermaid.startswith("flowchart LR")


def test_explain(project):
    project.edit("var lr: float = 1e-4", "var lr: float = 2e-4")
    out = project.formula_cmd("explain", "small.formula", "train.sft").stdout
    assert "module   fake_steps.train" in out and "config `lr`: 0.0001 → 0.0002" in out
    assert "model ← model.base" in out


def test_compile_cache_follows_every_file_the_formula_reads(project):
    lib = project.root / "lib.formula"
    lib.write_text('formula lib {\n  abstract = true\n}\n\nvar steps: int = 3\n\n'
                   'stage helper {\n  method = sft\n  model = x\n  data = y\n}\n')
    project.edit("var lr: float = 1e-4", 'var lr: float = 1e-4\n\nuse "lib.formula" as lib')
    r = project.formula_cmd("build", "small.formula", check=False)
    assert r.returncode == 1 and "`x` is not defined" in r.stderr  # the import is compiled
    lib.write_text('formula lib {\n  abstract = true\n}\n')
    r = project.formula_cmd("build", "small.formula", "--plain", check=False)
    assert r.returncode == 0, r.stderr  # an edited import invalidates the cached graph
    assert "7 cached" in r.stderr
    lib.unlink()
    r = project.formula_cmd("build", "small.formula", check=False)
    assert r.returncode == 1 and "cannot find import `lib.formula`" in r.stderr


def test_warnings_are_shown_again_from_the_compile_cache(project):
    project.edit("var lr: float = 1e-4", "var lr: float = 1e-4\nvar unused: int = 3")
    for _ in range(2):
        r = project.formula_cmd("build", "small.formula", "--plain")
        assert "warning[unused-var]: var `unused` is never used" in r.stderr

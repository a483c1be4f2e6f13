"""The real corpus, tokenizer, model, tokenize and pairs steps through `formula build`."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("transformers")


def build(project, store, seed, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("FORMULA_STEPS", "FORMULA_HOME")}
    env.update(FORMULA_HOME=str(store), PYTHONHASHSEED=str(seed), NO_COLOR="1")
    r = subprocess.run([sys.executable, "-m", "formula.cli", "build", "tiny.formula", "--plain", "-j", "2", *args],
                       cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stderr


def outputs(store) -> dict:
    build_ = json.loads(next((store / "refs").glob("*.json")).read_text())
    result = {}
    for step, key in build_["steps"].items():
        record = json.loads(next((store / "actions").glob(f"*/{key}.json")).read_text())
        result[step] = record["output"]
    return result


def test_steps_are_deterministic_so_rebuilds_cut_off(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    for name in ("tiny.formula", "data", "evals"):
        src = ROOT / "examples" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    steps = ["--only", "tokenize.sessions.tiny", "--only", "pairs.outcomes"]
    log = build(project, tmp_path / "a", 1, *steps)
    assert "5 built" in log
    build(project, tmp_path / "b", 2, *steps)
    a, b = outputs(tmp_path / "a"), outputs(tmp_path / "b")
    assert set(a) == {"corpus.sessions", "tokenizer.tiny", "model.tiny", "tokenize.sessions.tiny", "pairs.outcomes"}
    assert a == b, {k: (a[k][:12], b[k][:12]) for k in a if a[k] != b.get(k)}

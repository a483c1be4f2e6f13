"""The README's walkthrough, run as written: every ```sh block, in order, in one shell.

The install commands of "Two commands" are not run here: `.ci/run` runs the test one, and the
main job's install is the same. The store is a copy of the session's built example (so the
walkthrough's first build finds everything but the corpus step cached, through early cutoff)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_walkthrough_runs_as_written(built_example, llama_server_binary, tmp_path):
    _, store = built_example
    shutil.copytree(store, tmp_path / "store")
    shutil.rmtree("/tmp/my-formula", ignore_errors=True)
    bindir = os.path.dirname(sys.executable)
    script = "set -e\n" + "\n".join(blocks()).replace(".venv/bin/", bindir + "/")
    env = {**os.environ, "FORMULA_HOME": str(tmp_path / "store"), "NO_COLOR": "1"}
    env.pop("FORMULA_STEPS", None)
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "build ok: 12 cached" in r.stderr  # the second build
    assert "report.md" in r.stdout
    assert '"finish_reason":"stop"' in r.stdout.replace(" ", "")  # the served model answered and stopped
    assert "will run" in r.stdout and "train.sft" in r.stdout  # plan says what a new lr reruns
    assert "checked 1 formula: ok" in r.stderr
    assert len(blocks()) >= 5

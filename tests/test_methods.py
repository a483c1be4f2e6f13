"""The training-method seam (formula/methods/): the registry is what the schema, the checker and
the lowering know of methods; and helpers the tests of each method use (`tests/test_<name>.py`):
a stage added to the example formula, checked, lowered, or built and trained for a few steps."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from formula.compiler.lower import lower
from formula.compiler.pipeline import compile_formula
from formula.compiler.schema import SCHEMAS
from formula.methods import METHODS, SESSIONS

from conftest import ROOT


def project_with(tmp_path: Path, stage: str) -> Path:
    """The example project with `stage` appended to its formula."""
    project = tmp_path / "p"
    project.mkdir(exist_ok=True)
    for name in ("data", "evals"):
        if not (project / name).exists():
            shutil.copytree(ROOT / "examples" / name, project / name)
    (project / "tiny.formula").write_text((ROOT / "examples" / "tiny.formula").read_text() + "\n" + stage)
    return project


def check(tmp_path: Path, stage: str):
    return compile_formula(str(project_with(tmp_path, stage) / "tiny.formula"))


def lowered(tmp_path: Path, stage: str):
    result = check(tmp_path, stage)
    assert result.ok, [d.message for d in result.diagnostics]
    return lower(result.plan)


def train(tmp_path: Path, stage: str, name: str) -> Path:
    """Build `train.NAME` (and what it needs) with the real steps; the stage's output folder."""
    project = project_with(tmp_path, stage)
    env = {k: v for k, v in os.environ.items() if k != "FORMULA_STEPS"}
    env.update(FORMULA_HOME=str(tmp_path / "store"), NO_COLOR="1")
    run = lambda *args: subprocess.run([sys.executable, "-m", "formula.cli", *args], cwd=project, env=env,
                                       capture_output=True, text=True, timeout=900)
    r = run("build", "tiny.formula", "--only", f"train.{name}", "--plain", "-j", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    show = run("show", f"tiny:train.{name}").stdout
    return Path(next(line.split()[1] for line in show.splitlines() if line.startswith("output")))


def test_the_method_field_offers_the_registered_methods():
    assert set(SCHEMAS["stage"].field("method").type.choices) == set(METHODS) >= {"sft", "dpo"}


def test_a_methods_own_fields_are_its_stages_only():
    for name, method in METHODS.items():
        for f, _ in method.settings():
            assert name in SCHEMAS["stage"].field(f.name).methods


def test_a_stage_trains_on_what_its_method_takes(tmp_path):
    graph = lowered(tmp_path, "")
    for stage in ("lm", "sft", "dpo"):
        spec = graph.steps[f"train.{stage}"]
        data_step = spec.deps["data"].split(".")[0]
        kind = METHODS[spec.config["method"]].data
        assert data_step == ("tokenize" if kind is SESSIONS else "pairs"), stage
    # the dpo stage needs pairs out of its pairs block: the default, written nowhere
    assert "require" not in graph.steps["pairs.outcomes"].config


def test_a_method_field_on_another_methods_stage_is_refused(tmp_path):
    result = check(tmp_path, "stage extra {\n  method = sft\n  model = tiny\n  data = sessions\n  loss = ipo\n}\n")
    assert [d.code for d in result.diagnostics if d.is_error] == ["wrong-method"]

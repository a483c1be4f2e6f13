"""A stage's `resources { ... }` and `nodes`: checked by `formula check`, lowered beside the train
step's configuration, never into it (where a step runs does not change its key)."""

import shutil

import pytest

from conftest import ROOT
from formula.compiler.lower import lower
from formula.compiler.pipeline import compile_formula
from formula.compiler.resources import minutes

RESOURCES = '''  resources {
    gpus      = 2
    cpus      = 16
    memory    = 64 GiB
    time      = "1d12h"
    partition = "gpu"
  }
'''


def formula_with(tmp_path, lm_extra: str, where: str = "stage lm {"):
    shutil.copy(ROOT / "examples" / "tiny.formula", tmp_path / "tiny.formula")
    for name in ("data", "evals"):
        if not (tmp_path / name).exists():
            (tmp_path / name).symlink_to(ROOT / "examples" / name)
    path = tmp_path / "tiny.formula"
    text = path.read_text()
    assert where in text
    path.write_text(text.replace(where, where + "\n" + lm_extra, 1))
    return compile_formula(str(path))


def graph(result):
    assert result.ok, [d.message for d in result.diagnostics]
    return lower(result.plan)


def test_resources_are_beside_the_configuration_not_in_it(tmp_path):
    plain = graph(formula_with(tmp_path, ""))
    asked = graph(formula_with(tmp_path, RESOURCES))
    assert asked.steps["train.lm"].config == plain.steps["train.lm"].config
    assert asked.steps["train.lm"].resources == {"gpus": 2, "cpus": 16, "memory": 64 * 1024**3,
                                                 "time": 36 * 60, "partition": "gpu"}
    assert plain.steps["train.lm"].resources == {}
    assert asked.steps["train.sft"].resources == {}  # each stage asks for its own


def test_nodes_is_a_training_setting_and_a_resource(tmp_path):
    plain = graph(formula_with(tmp_path, ""))
    two = graph(formula_with(tmp_path, "  nodes = 2\n  processes = 4\n"))
    assert "nodes" not in plain.steps["train.lm"].config  # an unset new setting keeps old keys
    assert two.steps["train.lm"].config["nodes"] == 2  # world size changes training: in the key
    assert two.steps["train.lm"].resources == {"nodes": 2}


@pytest.mark.parametrize("body, code, words", [
    ('  resources {\n    gpu = 1\n  }\n', "unknown-field", "did you mean `gpus`"),
    ('  resources {\n    time = "4 hours"\n  }\n', "bad-time", "not a time limit"),
    ('  resources {\n    memory = 64\n  }\n', "type", "needs a unit"),
    ('  resources {\n    gpus = -1\n  }\n', "out-of-range", ">= 0"),
    ('  resources {\n    gpus = 1\n    gpus = 2\n  }\n', "duplicate-field", "set twice"),
])
def test_mistakes_in_resources(tmp_path, body, code, words):
    result = formula_with(tmp_path, body)
    errors = [d for d in result.diagnostics if d.is_error]
    assert errors, "no error"
    text = " ".join(f"{d.code} {d.message} {d.help} {d.label}" for d in errors)
    assert (code is None or code in {d.code for d in errors}) and words in text, text


def test_resources_belong_in_a_stage(tmp_path):
    result = formula_with(tmp_path, RESOURCES, where="corpus sessions {")
    errors = [d for d in result.diagnostics if d.is_error]
    assert [d.code for d in errors] == ["misplaced-block"] and "belong in a stage block" in errors[0].help


@pytest.mark.parametrize("text, mins", [("90m", 90), ("4h", 240), ("1d12h", 2160), ("02:00:00", 120),
                                        ("1-12:00:00", 2160), ("0:30", 30), ("1:00:01", 61)])
def test_time_limits(text, mins):
    assert minutes(text) == mins


@pytest.mark.parametrize("text", ["", "4", "4 hours", "1h1h", "0m", "1:61", "h"])
def test_not_time_limits(text):
    assert minutes(text) is None


def test_a_formula_asks_resources_for_a_stage_its_parent_defines(tmp_path):
    """A role formula that extends a library adds the cluster's wishes by override, without
    redefining the stage (docs/scale.md)."""
    base = graph(formula_with(tmp_path, ""))
    child = tmp_path / "child.formula"
    child.write_text('formula child {\n  description = "x"\n}\n\nextends "tiny.formula"\n\n'
                     'stage.lm.resources.gpus = 2\nstage.lm.resources.partition = "gpu"\n')
    asked = graph(compile_formula(str(child)))
    assert asked.steps["train.lm"].resources == {"gpus": 2, "partition": "gpu"}
    assert asked.steps["train.lm"].config == base.steps["train.lm"].config
    child.write_text(child.read_text() + "stage.lm.resources.gpu = 1\nstage.lm.optimizer.beta = 4\n")
    errors = [d for d in compile_formula(str(child)).diagnostics if d.is_error]
    text = " ".join(f"{d.code} {d.message} {d.help}" for d in errors)
    assert "did you mean `gpus`" in text and "`optimizer` is not set in this block" in text, text

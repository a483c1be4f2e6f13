"""The export-format seam (formula/formats/ and formula/runtime/formats/): a format is two modules.
Proved on a copy of the package with a made-up `npz` format added as exactly those two files:
the checker, the lowering, the step lookup and the step itself take it, and GGUF's rules stay
GGUF's."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

DESCRIPTION = '''
"""npz: the model's tensors in one NumPy archive (a made-up format, for this test)."""
from formula.formats import ExportFormat, Quant

FORMAT = ExportFormat(name="npz", doc="NumPy archives", file="model.npz",
                      quants={"f32": Quant(), "f16": Quant()})
'''

STEP = '''
"""npz at run time: the step, and how an eval would read the file."""
from pathlib import Path

from formula.contract.steps import ExportConfig
from formula.runtime.step import step_entry
from formula.runtime.steps import typed

LIBRARIES = ("numpy", "safetensors")
Config = ExportConfig


def run(cfg: Config, inputs: dict, output: Path, work: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    tensors = load_file(str(Path(inputs["model"]) / "model.safetensors"))
    np.savez(output / "model.npz", **{k: v.astype(cfg.quant) for k, v in tensors.items()})


def open_model(path: Path):
    raise NotImplementedError


main = step_entry(None, typed(Config, run))
if __name__ == "__main__":
    main()
'''

FORMULA = '''
formula t {}
model base {
  from = path("base")
}
export npz {
  from   = base
  format = npz
  quants = [f16]
}
'''


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    shutil.copytree(ROOT / "formula", root / "formula", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "formula" / "formats" / "npz.py").write_text(textwrap.dedent(DESCRIPTION))
    (root / "formula" / "runtime" / "formats" / "npz.py").write_text(textwrap.dedent(STEP))
    project = root / "p"
    (project / "base").mkdir(parents=True)
    np = pytest.importorskip("numpy")
    from safetensors.numpy import save_file

    save_file({"w": np.ones((2, 3), dtype="float32")}, str(project / "base" / "model.safetensors"))
    (project / "base" / "config.json").write_text("{}")
    (project / "t.formula").write_text(FORMULA)
    return root, project


def py(root, code: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("FORMULA_STEPS", None)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_format_is_two_modules(copy):
    root, project = copy
    r = py(root, textwrap.dedent('''
        import json, formula
        from formula.compiler.pipeline import compile_formula
        from formula.compiler.lower import lower
        from formula.runtime.steps import module_for
        assert formula.__file__.startswith(%r), formula.__file__
        result = compile_formula("t.formula")
        assert result.ok, [d.message for d in result.diagnostics]
        graph = lower(result.plan)
        spec = graph.steps["npz.npz.f16"]
        print(json.dumps({"kind": spec.kind, "config": spec.config, "module": module_for(spec.kind)}))
        ''' % str(root)), project)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got == {"kind": "npz", "config": {"export": "npz", "quant": "f16", "format": "npz"},
                   "module": "formula.runtime.formats.npz"}


def test_a_formats_quants_are_its_own(copy):
    root, project = copy
    (project / "bad.formula").write_text(FORMULA.replace("[f16]", "[q8_0]"))
    r = py(root, textwrap.dedent('''
        from formula.compiler.pipeline import compile_formula
        print([(d.code, d.message) for d in compile_formula("bad.formula").diagnostics])
        '''), project)
    assert r.returncode == 0, r.stderr
    assert "('wrong-quant', '`q8_0` is not a npz quantization type')" in r.stdout


def test_the_formats_step_runs(copy, tmp_path):
    root, project = copy
    (tmp_path / "out").mkdir()
    r = py(root, textwrap.dedent('''
        from pathlib import Path
        from formula.contract.steps import ExportConfig
        from formula.runtime.formats import npz
        npz.run(ExportConfig(export="npz", quant="float16", format="npz"), {"model": Path("base")},
                Path(%r), Path(%r))
        ''' % (str(tmp_path / "out"), str(tmp_path / "w"))), project)
    assert r.returncode == 0, r.stderr
    import numpy as np

    assert np.load(tmp_path / "out" / "model.npz")["w"].dtype == np.float16

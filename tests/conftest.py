import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("FORMULA_UPDATE_GOLDEN") == "1"


@pytest.fixture
def golden_dir():
    return GOLDEN


def copy_example(project: Path) -> Path:
    """The example formula, its data and evals, copied into `project` (tests edit the copy)."""
    import shutil

    project.mkdir(parents=True, exist_ok=True)
    for name in ("tiny.formula", "data", "evals"):
        src = ROOT / "examples" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    return project


def run_formula(project: Path, store: Path, *args, check=True, timeout=900):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "FORMULA_STEPS"}
    env.update(FORMULA_HOME=str(store), NO_COLOR="1")
    r = subprocess.run([sys.executable, "-m", "formula.cli", *args], cwd=project, env=env,
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def artifact(project: Path, store: Path, step: str) -> Path:
    out = run_formula(project, store, "show", f"tiny:{step}").stdout
    return Path(next(l.split()[1] for l in out.splitlines() if l.startswith("output")))


@pytest.fixture(scope="session")
def built_example(tmp_path_factory):
    """The example built all the way (GGUF and evals) once per test session: (project, store)."""
    pytest.importorskip("llama_cpp")
    tmp = tmp_path_factory.mktemp("example")
    project, store = copy_example(tmp / "p"), tmp / "store"
    run_formula(project, store, "build", "tiny.formula", "--plain", "-j", "2")
    return project, store


@pytest.fixture(scope="session")
def llama_server_binary():
    """The llama-server `formula serve` runs: built the first time on a machine (minutes, cached
    across runs in ~/.cache/formula), skipped only where it cannot be built (no cmake/compiler)."""
    from formula.runtime.export import llama_server

    if llama_server.find() is None:
        try:
            llama_server.tools()
        except llama_server.Unavailable as exc:
            pytest.skip(f"llama-server cannot be built here: {exc}")
    return llama_server.binary()

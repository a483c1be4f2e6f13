"""mypy on the whole package, at the level pyproject.toml sets ([tool.mypy]: mypy's default
checks, strict Optional, warnings for unused ignores and redundant casts; not --strict): no
error, and no "cannot find" (every `formula.*` import resolves to its file)."""

import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("mypy")


def test_mypy_finds_nothing_in_the_package():
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert "annot find" not in out, out[-3000:]
    assert r.returncode == 0 and "Success: no issues found" in out, out[-3000:]

"""The distribution ships every package the code imports: an editable install would hide a
package missing from pyproject.toml, a wheel would not."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_in_the_distribution():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {ROOT / folder for folder in setup["package-dir"].values()}
    declared = set(setup["packages"])
    assert declared == set(setup["package-dir"])
    for top in ("cli", "compiler", "runtime", "formula"):
        for init in (ROOT / top).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                assert init.parent in folders, f"{init.parent.relative_to(ROOT)} is not in pyproject.toml"

"""Issue 17 at the command line: no input makes `check`, `fmt` or `plan` print a traceback, a
folder check reports every file whatever the others hold, and long chains plan in linear time."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from formula.compiler.evaluate import LORA_MODULES

from conftest import ROOT

HEADER = 'formula {name} {{\n  description = "x"\n}}\n'


def run(*args, cwd=ROOT, store=None, timeout=300):
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("FORMULA_DEBUG", None)
    if store is not None:
        env["FORMULA_HOME"] = str(store)
    return subprocess.run([sys.executable, "-m", "formula.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert "internal-error" not in r.stderr + r.stdout, r.stderr[-3000:]


@pytest.fixture
def bad_folder(tmp_path):
    """One good formula and one of each kind of bad input."""
    (tmp_path / "good.formula").write_text(HEADER.format(name="good"))
    (tmp_path / "latin1.formula").write_bytes(
        (HEADER.format(name="latin").replace('"x"', '"caf\xe9"')).encode("latin-1"))
    (tmp_path / "image.formula").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (tmp_path / "bom.formula").write_bytes(b"\xef\xbb\xbf" + HEADER.format(name="bom").encode())
    (tmp_path / "string.formula").write_text('formula s {\n  description = "never closed\n}\n')
    (tmp_path / "deep.formula").write_text(HEADER.format(name="deep") + "var lr: float = 1" + " * 1" * 3000 + "\n")
    (tmp_path / "neg.formula").write_text(HEADER.format(name="neg") + "var lr: float = " + "-" * 1000 + "1\n")
    (tmp_path / "nbsp.formula").write_text(HEADER.format(name="nbsp").replace("description =", "description\u00a0="))
    (tmp_path / "empty.formula").write_text("")
    return tmp_path


EXPECTED = {"latin1.formula": "encoding", "image.formula": "encoding", "string.formula": "syntax",
            "deep.formula": "too-deep", "neg.formula": "too-deep", "nbsp.formula": "confusable",
            "empty.formula": "missing-header"}


def test_a_folder_check_reports_every_file(bad_folder):
    r = run("check", str(bad_folder))
    no_traceback(r)
    assert r.returncode == 1
    for name, code in EXPECTED.items():
        assert re.search(rf"error\[{code}\].*\n\s*--> .*{re.escape(name)}:\d+:\d+", r.stderr), (name, r.stderr)
    assert r.stderr.count("error[") == 7  # one each: nothing cascades, and bom.formula is fine
    assert "checked 9 formulas: 7 errors" in r.stderr


def test_json_is_printed_whatever_the_files_hold(bad_folder):
    r = run("check", "--format", "json", str(bad_folder))
    no_traceback(r)
    out = json.loads(r.stdout)
    found = {(Path(d["file"]).name, d["code"]) for d in out["diagnostics"]}
    assert found == set(EXPECTED.items())
    assert out["summary"] == {"files": 9, "errors": 7, "warnings": 0}


def test_fmt_reports_bad_bytes_and_drops_a_byte_order_mark(bad_folder):
    r = run("fmt", "--check", str(bad_folder))
    no_traceback(r)
    assert r.returncode == 1 and "latin1.formula:2:" in r.stderr
    r = run("fmt", str(bad_folder / "bom.formula"))
    assert r.returncode == 0 and (bad_folder / "bom.formula").read_bytes().startswith(b"formula")


def test_overrides_without_a_formula_say_so():
    r = run("check", "var.rank=8")
    assert r.returncode == 2 and "name the formula" in r.stderr


def test_empty_and_repeated_overrides_are_errors():
    r = run("check", "formulas/polecat.formula", "stage.sft.lr=")
    assert r.returncode == 1 and "`stage.sft.lr` has no value" in r.stderr and "quotes" not in r.stderr
    r = run("check", "formulas/polecat.formula", "var.rank=8", "param.rank=16")
    assert r.returncode == 1 and "`var.rank` is set twice on the command line" in r.stderr


def chain(n: int) -> str:
    """A formula of `n` stages, each starting from the previous one."""
    text = (ROOT / "examples" / "tiny.formula").read_text().split("# A model made by init")[0]
    text += "".join(f"\nstage s{i} {{\n  method  = sft\n  model   = {f's{i - 1}' if i else 'tiny'}\n"
                    f"  data    = sessions\n  adapter = full\n}}\n" for i in range(n))
    return text.replace("formula tiny", f"formula chain{n}")


def test_plan_of_a_thousand_chained_stages(tmp_path):
    for name in ("data", "evals"):
        os.symlink(ROOT / "examples" / name, tmp_path / name)
    (tmp_path / "chain.formula").write_text(chain(1000))
    start = time.perf_counter()
    r = run("plan", "chain.formula", cwd=tmp_path, store=tmp_path / "store")
    took = time.perf_counter() - start
    no_traceback(r)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("train.s") >= 1000
    assert took < 20, f"plan of 1,000 chained stages took {took:.1f} s"


def test_plan_of_a_formula_without_steps(tmp_path):
    (tmp_path / "empty.formula").write_bytes(b"\xef\xbb\xbf" + HEADER.format(name="empty").encode())
    r = run("plan", "empty.formula", cwd=tmp_path, store=tmp_path / "store")
    no_traceback(r)
    assert r.returncode == 0 and "0 to run" in r.stderr


def test_the_lora_table_in_the_guide_matches_the_checker():
    guide = (ROOT / "docs" / "language.md").read_text()
    rows = {}
    for line in guide.splitlines():
        m = re.match(r"\| ([a-z0-9_, ]+) \| `([a-z_ 0-9]+)` \|$", line)
        if m:
            for family in m.group(1).split(", "):
                rows[family] = tuple(m.group(2).split())
    assert rows == {k: tuple(v) for k, v in LORA_MODULES.items()}

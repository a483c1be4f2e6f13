"""The `formula` command: exit codes, output formats, overrides, and what it imports."""

import json
import subprocess
import sys

import pytest

from formula.cli.main import main

from conftest import GOLDEN, ROOT

CHECK = GOLDEN / "check"
HEAVY = {"torch", "transformers", "trl", "peft", "datasets", "llama_cpp", "hydra", "omegaconf"}


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "formula.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_clean_formulas_exit_zero():
    r = run("check", "formulas", "examples")
    assert r.returncode == 0, r.stderr
    assert "checked 7 formulas: ok" in r.stderr


def test_errors_exit_one_and_render_like_rustc():
    r = run("check", str(CHECK / "unknown_field_did_you_mean.formula"))
    assert r.returncode == 1
    assert "error[unknown-field]: unknown field `epoch` in stage `sft`" in r.stderr
    assert "= help: did you mean `epochs`?" in r.stderr
    assert "unknown_field_did_you_mean.formula:18:3" in r.stderr


def test_warnings_alone_exit_zero():
    r = run("check", str(CHECK / "unused_var_warning.formula"))
    assert r.returncode == 0
    assert "warning[unused-var]" in r.stderr


def test_usage_mistakes_exit_two():
    assert run("check", "no/such/file.formula").returncode == 2
    assert run("check").returncode == 2
    assert run("frobnicate").returncode == 2
    assert run("check", "formulas", "stage.sft.lr=1e-4").returncode == 2  # overrides need one file


def test_folders_are_searched_recursively(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.formula").write_text('formula x {\n  description = 1\n}\n')
    r = run("check", str(tmp_path))
    assert r.returncode == 1 and "x.formula:2:17" in r.stderr


def test_json_format():
    r = run("check", "--format", "json", str(CHECK / "duplicate_field.formula"))
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["summary"] == {"files": 1, "errors": 1, "warnings": 0}
    [d] = out["diagnostics"]
    assert d["code"] == "duplicate-field" and d["severity"] == "error"
    assert (d["line"], d["column"]) == (19, 3)
    assert d["labels"][0]["message"] == "first set here"


def test_github_format_is_workflow_annotations():
    r = run("check", "--format", "github", str(CHECK / "unknown_quant_type.formula"))
    line = r.stdout.strip()
    assert line.startswith("::error file=")
    assert ",line=11,endLine=11,col=18,endColumn=23,title=unknown-value::" in line
    assert "%0Ahelp: did you mean" in line


def test_overrides_apply_and_are_checked():
    ok = run("check", "formulas/polecat.formula", "stage.sft.lr=1e-4", "var.rank=64")
    assert ok.returncode == 0, ok.stderr
    bad = run("check", "formulas/polecat.formula", "var.rank=12")
    assert bad.returncode == 1 and "var `rank` must be one of 8, 16, 32, 64, not 12" in bad.stderr
    assert "<command line>:1:10" in bad.stderr


def test_check_imports_nothing_heavy():
    code = ("import sys; from formula.cli.main import main; main(['check', 'formulas', 'examples']);"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    loaded = set(r.stdout.split())
    assert not loaded & HEAVY, loaded & HEAVY


def test_fmt_check_and_rewrite(tmp_path):
    f = tmp_path / "x.formula"
    f.write_text("formula x{description=\"d\"}\n")
    assert run("fmt", "--check", str(f)).returncode == 1
    assert f.read_text() == "formula x{description=\"d\"}\n"
    assert run("fmt", str(f)).returncode == 0
    assert f.read_text() == 'formula x {\n  description = "d"\n}\n'
    assert run("fmt", "--check", str(f)).returncode == 0


def test_fmt_refuses_a_file_with_syntax_errors(tmp_path):
    f = tmp_path / "x.formula"
    f.write_text("formula x {\n  a = = 1\n}\n")
    r = run("fmt", str(f))
    assert r.returncode == 1 and "error[syntax]" in r.stderr
    assert f.read_text() == "formula x {\n  a = = 1\n}\n"


def test_in_process_main_returns_codes(capsys):
    assert main(["check", str(ROOT / "examples")]) == 0
    assert main(["check", str(CHECK / "missing_header.formula")]) == 1

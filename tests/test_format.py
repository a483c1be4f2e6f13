"""`formula fmt`: golden layouts, idempotence, and that formatting changes layout only."""

import dataclasses
from pathlib import Path

import pytest

from formula.compiler import ast
from formula.compiler.format import format_source
from formula.compiler.parse import parse
from formula.compiler.source import Source

from conftest import GOLDEN, ROOT, UPDATE_GOLDEN

FMT = GOLDEN / "fmt"
CASES = sorted(p.stem for p in FMT.glob("*.formula"))
ALL_VALID = sorted(
    [p for d in ("formulas", "examples") for p in (ROOT / d).rglob("*.formula")]
    + [FMT / f"{c}.formula" for c in CASES]
    + [p for p in (GOLDEN / "check").rglob("*.formula") if not p.stem.startswith("syntax_")]
)


def shape(node):
    """A node without spans and comments: what formatting must not change."""
    if isinstance(node, tuple):
        return tuple(shape(n) for n in node)
    if isinstance(node, ast.Module):
        return shape(node.items)
    if hasattr(node, "__dataclass_fields__"):
        return (type(node).__name__,) + tuple(
            shape(getattr(node, f)) for f in node.__dataclass_fields__ if f not in ("span", "source"))
    return node


def plan_shape(value):
    """A plan without source positions: what reformatting must not change."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,) + tuple(
            plan_shape(getattr(value, f.name)) for f in dataclasses.fields(value)
            if type(getattr(value, f.name)).__name__ != "Origin")
    if isinstance(value, dict):
        return tuple((k, plan_shape(v)) for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(plan_shape(v) for v in value)
    return value


def fmt(text: str, path: str = "t.formula") -> str:
    out, diags = format_source(Source(path, text))
    assert out is not None, diags
    return out


@pytest.mark.parametrize("name", CASES)
def test_layout_matches_golden(name):
    text = (FMT / f"{name}.formula").read_text()
    expected = FMT / f"{name}.formatted"
    out = fmt(text)
    if UPDATE_GOLDEN:
        expected.write_text(out)
    assert out == expected.read_text()


@pytest.mark.parametrize("path", ALL_VALID, ids=lambda p: str(p.relative_to(ROOT)))
def test_idempotent_and_meaning_preserving(path):
    text = path.read_text()
    once = fmt(text, str(path))
    assert fmt(once, str(path)) == once
    before, _ = parse(Source(str(path), text))
    after, _ = parse(Source(str(path), once))
    assert shape(before) == shape(after)
    assert [c.text.rstrip() for c in before.comments] == [c.text.rstrip() for c in after.comments]


@pytest.mark.parametrize("path", ALL_VALID, ids=lambda p: str(p.relative_to(ROOT)))
def test_formatting_keeps_the_plan_and_the_diagnostics(path):
    from formula.compiler.pipeline import compile_formula
    from formula.compiler.resolve import read_file

    text = path.read_text()
    once = fmt(text, str(path))
    before = compile_formula(str(path))
    after = compile_formula(str(path), read=lambda p: once if p == str(path) else read_file(p))
    assert plan_shape(before.plan) == plan_shape(after.plan)
    assert sorted(d.code for d in before.diagnostics) == sorted(d.code for d in after.diagnostics)


def test_a_comment_inside_a_call_does_not_join_the_next_fields_run():
    """Issue 17: the first pass aligned `from     =` with the field after a blank line, the
    second pass undid it."""
    text = ('formula x {\n  description = "d"\n}\n\nmodel base {\n  from = hub("a/b",  # c\n'
            '    revision = "main")\n\n  # after a blank line\n  template = chatml\n}\n')
    once = fmt(text)
    assert fmt(once) == once
    assert "  from = hub(" in once and "\n\n  # after a blank line\n  template = chatml" in once


def test_checked_in_formulas_are_formatted():
    for d in ("formulas", "examples"):
        for path in (ROOT / d).rglob("*.formula"):
            assert fmt(path.read_text(), str(path)) == path.read_text(), f"run `formula fmt {path}`"


def test_syntax_errors_leave_the_text_alone():
    out, diags = format_source(Source("bad.formula", "formula x {\n  a = = 1\n}\n"))
    assert out is None and diags and diags[0].code == "syntax"

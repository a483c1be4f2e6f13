"""Mutated formulas give a plan or diagnostics, never a traceback; fmt stays sound on them."""

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from formula.compiler.format import format_source
from formula.compiler.parse import parse
from formula.compiler.pipeline import compile_formula
from formula.compiler.resolve import read_file
from formula.compiler.source import Source

from conftest import GOLDEN, ROOT
from test_format import shape

SEEDS = sorted([p for d in ("formulas", "examples") for p in (ROOT / d).rglob("*.formula")]
               + list((GOLDEN / "fmt").glob("*.formula")))
TOKEN = re.compile(r'\s+|"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|==|!=|<=|>=|.', re.S)
JUNK = ["{", "}", "(", ")", "[", "]", "=", "==", ",", ".", "%", '"', "#", "\n", "var", "check",
        "stage", "where", "and", "not", "-", "*", "1e-4", "tokens", "@", "\t", "é", "\x00"]


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


@st.composite
def mutated(draw):
    path = draw(st.sampled_from(SEEDS))
    toks = tokens(path.read_text())
    for _ in range(draw(st.integers(1, 4))):
        if not toks:
            break
        i = draw(st.integers(0, len(toks) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "truncate", "insert"]))
        if op == "delete":
            del toks[i]
        elif op == "duplicate":
            toks.insert(i, toks[i])
        elif op == "swap" and i + 1 < len(toks):
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        elif op == "truncate":
            toks = toks[:i]
        elif op == "insert":
            toks.insert(i, draw(st.sampled_from(JUNK)))
    return path, "".join(toks)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_formula_gives_a_plan_or_diagnostics(case):
    path, text = case

    def read(p: str):
        return text if p == str(path) else read_file(p)

    result = compile_formula(str(path), read=read)
    assert result.plan is not None or any(d.is_error for d in result.diagnostics)
    for d in result.diagnostics:
        assert d.message and d.code


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fmt_of_anything_that_parses_is_idempotent_and_keeps_meaning(case):
    path, text = case
    source = Source(str(path), text)
    out, diags = format_source(source)
    if out is None:
        assert diags
        return
    again, _ = format_source(Source(str(path), out))
    assert again == out
    assert shape(parse(source)[0]) == shape(parse(Source(str(path), out))[0])

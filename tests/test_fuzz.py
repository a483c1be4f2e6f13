"""Mutated formulas give a plan or diagnostics, never a traceback; fmt stays sound on them.

Three kinds of input: token-level mutations of the real formulas, raw bytes (not UTF-8, binary,
byte-order marks, confusable characters), and deep structures (nesting and chains thousands of
levels deep). Each must give a plan or located diagnostics, and never `internal-error`, the
diagnostic a crash of the compiler turns into.
"""

import os
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from formula.compiler.diagnostics import render_github, render_json, render_text
from formula.compiler.format import format_bytes, format_source
from formula.compiler.parse import MAX_DEPTH, parse
from formula.compiler.pipeline import compile_formula
from formula.compiler.resolve import read_file
from formula.compiler.source import Source

from conftest import GOLDEN, ROOT
from test_format import plan_shape, shape

# FORMULA_FUZZ_SCALE=10 runs ten times the examples of every property here.
SCALE = int(os.environ.get("FORMULA_FUZZ_SCALE", "1"))
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


@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_mutated_formula_gives_a_plan_or_diagnostics(case):
    path, text = case

    def read(p: str):
        return text if p == str(path) else read_file(p)

    result = compile_formula(str(path), read=read)
    assert result.plan is not None or any(d.is_error for d in result.diagnostics)
    for d in result.diagnostics:
        assert d.message and d.code


@settings(max_examples=200 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


# --- shared checks -------------------------------------------------------------------------------


def sound(result) -> None:
    """A plan or errors; every diagnostic coded, worded, located, renderable; no crash."""
    assert result.plan is not None or any(d.is_error for d in result.diagnostics)
    for d in result.diagnostics:
        assert d.code != "internal-error", d.message
        assert d.message and d.code and d.span is not None, d
    render_text(result.diagnostics), render_json(result.diagnostics), render_github(result.diagnostics)


def compile_text(path: Path, data) -> object:
    return compile_formula(str(path), read=lambda p: data if p == str(path) else read_file(p))


# --- raw bytes -----------------------------------------------------------------------------------

NASTY = [b"\xe9", b"\xff", b"\xc3", b"\x80", b"\x00", b"\xef\xbb\xbf", "\u00a0".encode(),
         "\u200b".encode(), "\u0435".encode(), "\u201c".encode(), "\u2212".encode(), "\uff1d".encode(),
         b"\r", b"\r\n", b"\x1b[31m", b"\t", "\u00e9".encode(), b'"', b"'", b"\\", b"#", b"\n"]


@st.composite
def raw_bytes(draw):
    path = draw(st.sampled_from(SEEDS))
    if draw(st.integers(0, 4)) == 0:
        return path, draw(st.binary(max_size=800))
    data = bytearray(path.read_bytes())
    if draw(st.booleans()):
        data[:0] = b"\xef\xbb\xbf"
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "insert", "flip", "cut"]))
        if op == "insert":
            data[i:i] = draw(st.sampled_from(NASTY) | st.binary(min_size=1, max_size=4))
        elif op == "flip" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[i:i + draw(st.integers(1, 40))]
    return path, bytes(data)


@settings(max_examples=400 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_bytes())
def test_any_bytes_give_a_plan_or_located_diagnostics(case):
    path, data = case
    sound(compile_text(path, data))
    out, diags = format_bytes(str(path), data)
    if out is None:
        assert diags and all(d.span is not None for d in diags)
    else:
        assert format_bytes(str(path), out.encode())[0] == out


def test_text_that_is_not_utf8_is_located():
    path = GOLDEN / "check" / "t.formula"
    latin1 = 'formula t {\n  description = "caf\xe9"\n}\n'.encode("latin-1")
    [d] = compile_text(path, latin1).diagnostics
    assert (d.code, d.span.line, d.span.column) == ("encoding", 2, 21)
    assert format_bytes(str(path), latin1)[0] is None


def test_a_byte_order_mark_is_not_part_of_the_formula():
    path = GOLDEN / "check" / "t.formula"
    text = 'formula t {\n  description = "x"\n}\n'
    result = compile_text(path, b"\xef\xbb\xbf" + text.encode())
    assert result.plan is not None and not result.diagnostics
    assert format_bytes(str(path), b"\xef\xbb\xbf" + text.encode())[0] == text


# --- deep structures -----------------------------------------------------------------------------

NESTINGS = {  # kind -> (field it goes in, an expression nested n deep)
    "neg": ("lr", lambda n: "-" * n + "1e-4"),
    "paren": ("lr", lambda n: "(" * n + "1e-4" + ")" * n),
    "sum": ("lr", lambda n: "1e-4" + " + 0" * n),
    "product": ("lr", lambda n: "lr" + " * 1" * n),
    "mixed": ("lr", lambda n: "".join("-(" if i % 2 else "1 * " for i in range(n)) + "1" + ")" * (n // 2)),
    "not": ("where", lambda n: "not " * n + "turns > 1"),
    "and": ("where", lambda n: " and ".join(["turns > 1"] * n)),
    "or": ("where", lambda n: " or ".join(["(turns > 1)"] * n)),
    "list": ("targets", lambda n: "[" * n + "q_proj" + "]" * n),
    "attr": ("model", lambda n: "base" + ".x" * n),
    "call": ("model", lambda n: "base" + "()" * n),
    "blocks": ("block", lambda n: "".join(f"b{i} {{\n" for i in range(n)) + "a = 1\n" + "}\n" * n),
}


def deep_formula(kind: str, n: int) -> str:
    where, make = NESTINGS[kind]
    expr = make(n)
    if where == "block":
        return "formula deep {\n  description = \"x\"\n}\n\nmodel base {\n" + expr + "}\n"
    return ("formula deep {\n  description = \"x\"\n}\n\nvar lr: float = 1e-4\n\n"
            "model base {\n  from = hub(\"Qwen/Qwen2.5-0.5B-Instruct\")\n}\n\n"
            "corpus c {\n  source = transcripts(\"data/*.jsonl\")\n"
            + (f"  where  = {expr}\n" if where == "where" else "") + "}\n\n"
            "stage s {\n  method  = sft\n"
            + (f"  model   = {expr}\n" if where == "model" else "  model   = base\n")
            + "  data    = c\n"
            + (f"  adapter = lora(targets = {expr})\n" if where == "targets" else "")
            + (f"  lr      = {expr}\n" if where == "lr" else "  lr      = lr\n") + "}\n")


@settings(max_examples=150 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(NESTINGS)), st.one_of(st.integers(1, 2 * MAX_DEPTH), st.integers(1, 5000)))
def test_any_nesting_depth_gives_a_plan_or_located_diagnostics(kind, n):
    path = GOLDEN / "check" / "deep.formula"
    text = deep_formula(kind, n)
    result = compile_text(path, text)
    sound(result)
    if n > MAX_DEPTH + 1 and kind != "paren":
        assert [d.code for d in result.diagnostics] == ["too-deep"]
    out, _ = format_source(Source(str(path), text))
    if out is not None:
        assert format_source(Source(str(path), out))[0] == out


def test_long_chains_are_not_deep_recursion():
    """1,000 stages each starting from the previous, 2,000 vars each defined by the next, and
    100 formulas each extending the next: checked without a RecursionError."""
    path = GOLDEN / "check" / "chain.formula"
    head = ('formula chain {\n  description = "x"\n}\n\nmodel base {\n'
            '  from = hub("Qwen/Qwen2.5-0.5B-Instruct")\n}\n\ncorpus c {\n'
            '  source = transcripts("data/*.jsonl")\n}\n')
    stages = "".join(f"\nstage s{i} {{\n  method = sft\n  model  = {f's{i - 1}' if i else 'base'}\n"
                     f"  data   = c\n}}\n" for i in range(1000))
    result = compile_text(path, head + stages)
    sound(result)
    assert len(result.plan.stages) == 1000

    varchain = "".join(f"var v{i}: int = v{i + 1} + 1\n" for i in range(2000)) + "var v2000: int = 1\n"
    result = compile_text(path, head + varchain + "\nstage s {\n  method = sft\n  model  = base\n"
                          "  data   = c\n  epochs = v0 - 2000\n}\n")
    sound(result)
    assert result.plan is not None and not result.diagnostics  # epochs = 1: in range


def test_extends_chains_are_refused_past_a_depth(tmp_path):
    for i in range(100):
        (tmp_path / f"f{i}.formula").write_text(
            f'formula f{i} {{\n  description = "x"\n  abstract = true\n}}\n'
            + (f'\nextends "f{i + 1}.formula"\n' if i < 99 else ""))
    result = compile_formula(str(tmp_path / "f0.formula"))
    sound(result)
    assert [d.code for d in result.diagnostics] == ["import-depth"]


def test_a_large_formula_compiles():
    path = GOLDEN / "check" / "large.formula"
    text = 'formula large {\n  description = "x"\n}\n\n' + "".join(
        f"var v{i}: int = {i}\n" for i in range(5000))
    result = compile_text(path, text)
    sound(result)
    assert {d.code for d in result.diagnostics} == {"unused-var"}


# --- formatting is a fixed point that keeps the plan ---------------------------------------------

COMMENTED = re.compile(r"[(\[,]")


@st.composite
def mutated_with_comments(draw):
    path, text = draw(mutated()) if draw(st.booleans()) else (
        (p := draw(st.sampled_from(SEEDS))), p.read_text())
    for _ in range(draw(st.integers(0, 3))):
        spots = [m.end() for m in COMMENTED.finditer(text)]
        if not spots:
            break
        at = draw(st.sampled_from(spots))
        text = text[:at] + draw(st.sampled_from(["  # c\n", " # c\n    ", "\n", "  # c\n\n"])) + text[at:]
    return path, text


@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_with_comments())
def test_fmt_is_a_fixed_point_and_keeps_the_plan(case):
    path, text = case
    once, _ = format_source(Source(str(path), text))
    if once is None:
        return
    assert format_source(Source(str(path), once))[0] == once
    assert shape(parse(Source(str(path), text))[0]) == shape(parse(Source(str(path), once))[0])
    before, after = compile_text(path, text), compile_text(path, once)
    assert plan_shape(before.plan) == plan_shape(after.plan)
    assert sorted(d.code for d in before.diagnostics) == sorted(d.code for d in after.diagnostics)

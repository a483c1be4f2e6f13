"""Expressions → checked values, directed by the type the schema expects.

Every mistake becomes a diagnostic and the value `INVALID`, which later checks pass over
silently so that one mistake is reported once.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Final

from formula.contract import hublock
from formula.contract import types as T

from . import ast, plan
from .diagnostics import (Diagnostic, Label, did_you_mean, edit_distance, error, near_names,
                          one_of, warning)
from .resolve import BlockDef, Program, Scope, VarDef
from .schema import (LM_EVAL, LM_EVAL_FIGURES, METADATA_FIELDS, METRIC_ATTRS, METRICS, ROLES, SCHEMAS,
                     GATE_TESTS, TAGGED, VAR_TYPES, is_task_file)
from .source import Span


class _Invalid(enum.Enum):
    """What an expression that failed (and was reported) evaluates to: falsy, tested with `is`
    (an enum of one member, so a type checker narrows `x is INVALID` too)."""

    INVALID = "INVALID"

    def __repr__(self) -> str:
        return "INVALID"

    def __bool__(self) -> bool:
        return False


INVALID: Final = _Invalid.INVALID


@dataclass(frozen=True)
class FuncValue:
    name: str
    args: dict
    span: Span


@dataclass(frozen=True)
class BlockRef:
    block: BlockDef
    member: str | None
    span: Span


@dataclass(frozen=True)
class TaggedRef:
    """`tagged("v1")` or `tagged("v1", gguf.q8_0)` in a metric: `target` None is the eval's `on`."""

    tag: str
    target: BlockRef | None
    span: Span


TAG_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _value_span(var: VarDef) -> Span:
    """Where a var's value is written (its name, for a var declared without one)."""
    return var.value.span if var.value is not None else var.decl.name.span


def _kind_article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" or kind in ("sft",) else f"a {kind}"


def _expr_name(expr: ast.Expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.name
    if isinstance(expr, ast.Attr):
        base = _expr_name(expr.obj)
        return f"{base}.{expr.attr.name}" if base else None
    return None


def describe_value(expr: ast.Expr) -> str:
    return {
        ast.Number: "a number", ast.String: "a string", ast.Bool: "a boolean",
        ast.Percent: "a percentage", ast.Size: "a size", ast.ListExpr: "a list",
        ast.Call: "a call", ast.Compare: "a comparison", ast.BoolOp: "a condition",
        ast.Not: "a condition", ast.Where: "a filtered corpus", ast.BinOp: "arithmetic",
        ast.Neg: "a number",
    }.get(type(expr), "a name")


class Evaluator:
    def __init__(self, program: Program, diagnostics: list[Diagnostic], lenient_vars: bool = False):
        self.program = program
        self.diags = diagnostics
        self.lenient_vars = lenient_vars  # abstract formulas: a required var may stay unset
        self.var_values: dict[tuple[int, str], object] = {}
        self.var_busy: set[tuple[int, str]] = set()
        self.used_vars: set[tuple[int, str]] = set()
        self.refs: list[tuple[BlockDef | None, BlockDef, Span]] = []  # (from, to, where)
        self.current_block: BlockDef | None = None
        self.holdout_uses: list[tuple[plan.DataView, BlockDef, ast.Expr]] = []
        self._condition_text = ""
        self._priming = False

    def err(self, *args, **kw) -> _Invalid:
        self.diags.append(error(*args, **kw))
        return INVALID

    # --- vars -----------------------------------------------------------------------------------

    def var_type(self, var: VarDef) -> T.Type | None:
        return VAR_TYPES.get(var.decl.type.name)

    def var_value(self, scope: Scope, name: str, at: Span | None) -> Any:
        var = scope.vars[name]
        key = (id(scope), name)
        if at is not None:
            self.used_vars.add(key)
        if key in self.var_values:
            return self.var_values[key]
        if key in self.var_busy:
            return self.err("var-cycle", f"var `{name}` is defined in terms of itself",
                            at or var.decl.name.span, "used here while computing its value")
        if not self.var_busy and not self._priming:
            self._prime(scope, name)
            if key in self.var_values:
                return self.var_values[key]
        typ = self.var_type(var)
        if typ is None:
            self.var_values[key] = INVALID
            return INVALID
        if var.value is None:
            if var.decl.required and not self.lenient_vars:
                where = var.set_at or var.decl.name.span
                self.err("missing-var", f"var `{name}` is required and has no value",
                         var.decl.name.span, "declared `required` here",
                         help=f"set it on the command line (`var.{name}=...`), in a formula that "
                              f"extends this one (`var.{name} = ...`), or in the importing `use`")
            self.var_values[key] = INVALID
            return INVALID
        self.var_busy.add(key)
        saved, self.current_block = self.current_block, None
        value = self.eval(var.value, typ, var.value_scope or scope)
        self.current_block = saved
        self.var_busy.discard(key)
        if value is not INVALID:
            value = self._check_var_constraints(var, value, scope)
        self.var_values[key] = value
        return value

    def _prime(self, scope: Scope, name: str) -> None:
        """Evaluate the vars that `name` depends on first, deepest first, so that a long chain
        of vars (`var v2 = v1 + 1` ...) is never evaluated by deep recursion."""
        order: list[tuple[Scope, str]] = []
        seen = {(id(scope), name)}
        todo = [(scope, name, iter(self._var_deps(scope, name)))]
        while todo:
            s, n, deps = todo[-1]
            for dep_scope, dep in deps:
                if (id(dep_scope), dep) not in seen and (id(dep_scope), dep) not in self.var_values:
                    seen.add((id(dep_scope), dep))
                    todo.append((dep_scope, dep, iter(self._var_deps(dep_scope, dep))))
                    break
            else:
                todo.pop()
                order.append((s, n))
        self._priming = True
        try:
            for s, n in order[:-1]:
                self.var_value(s, n, None)
        finally:
            self._priming = False

    def _var_deps(self, scope: Scope, name: str) -> list[tuple[Scope, str]]:
        var = scope.vars[name]
        if var.value is None:
            return []
        where = var.value_scope or scope
        out = []
        stack: list = [var.value]
        while stack:
            node = stack.pop()
            if isinstance(node, tuple):
                stack.extend(node)
                continue
            ref = self.lookup_var(node, where) if isinstance(node, (ast.Name, ast.Attr)) else None
            if ref is not None:
                out.append((where, ref.decl.name.name))
            if hasattr(node, "__dataclass_fields__"):
                stack.extend(getattr(node, f) for f in node.__dataclass_fields__
                             if f not in ("span", "name", "attr"))
        return out

    def _check_var_constraints(self, var: VarDef, value: object, scope: Scope) -> object:
        decl = var.decl
        if decl.enum is not None:
            allowed = []
            typ = self.var_type(var) or T.Any_()  # an unknown type was reported already
            for item in decl.enum.items:
                v = self.eval(item, typ, scope)
                if v is not INVALID:
                    allowed.append(v)
            if allowed and value not in allowed:
                labels = [Label(decl.enum.span, "allowed values")]
                return self.err("var-enum", f"var `{decl.name.name}` must be one of "
                                f"{', '.join(_show(a) for a in allowed)}, not {_show(value)}",
                                _value_span(var), "not allowed", labels=labels,
                                help=did_you_mean(value, [a for a in allowed if isinstance(a, str)])
                                if isinstance(value, str) else "")
        if decl.pattern is not None:
            try:
                rx = re.compile(decl.pattern.value)
            except re.error as exc:
                return self.err("bad-pattern", f"the pattern of var `{decl.name.name}` is not a "
                                f"valid regular expression: {exc}", decl.pattern.span, "invalid")
            if not isinstance(value, str) or not rx.fullmatch(value):
                return self.err("var-pattern", f"var `{decl.name.name}` = {_show(value)} does not "
                                f"match its pattern", _value_span(var), "does not match",
                                labels=[Label(decl.pattern.span, "pattern")])
        return value

    def lookup_var(self, expr: ast.Expr, scope: Scope) -> VarDef | None:
        if isinstance(expr, ast.Name) and expr.name in scope.vars:
            return scope.vars[expr.name]
        if (isinstance(expr, ast.Attr) and isinstance(expr.obj, ast.Name)
                and expr.obj.name in ("var", "param") and expr.attr.name in scope.vars
                and expr.obj.name not in scope.blocks):
            return scope.vars[expr.attr.name]
        return None

    def _var_ref(self, expr: ast.Expr, scope: Scope) -> object | None:
        """The value of `expr` if it names a var; None if it does not."""
        var = self.lookup_var(expr, scope)
        if var is None:
            if (isinstance(expr, ast.Attr) and isinstance(expr.obj, ast.Name)
                    and expr.obj.name in ("var", "param") and expr.obj.name not in scope.blocks):
                return self.err("undefined", f"no var `{expr.attr.name}`", expr.attr.span,
                                "not declared", help=did_you_mean(expr.attr.name, scope.vars))
            return None
        return self.var_value(scope, var.decl.name.name, expr.span)

    # --- references -------------------------------------------------------------------------

    def resolve_ref(self, expr: ast.Expr, scope: Scope, want: str) -> BlockRef | _Invalid:
        """A block reference: `name`, `name.member`, `alias.name`, `alias.name.member`."""
        parts: list[ast.Ident] = []
        node = expr
        while isinstance(node, ast.Attr):
            parts.append(node.attr)
            node = node.obj
        if not isinstance(node, ast.Name):
            return self.err("type", f"expected {want}, found {describe_value(expr)}", expr.span,
                            f"not {want}")
        parts.append(ast.Ident(node.name, node.span))
        parts.reverse()
        current = scope
        i = 0
        while parts[i].name in current.uses and parts[i].name not in current.blocks and i + 1 < len(parts):
            current = current.uses[parts[i].name]
            i += 1
        name = parts[i]
        block = current.blocks.get(name.name)
        if block is None:
            candidates = list(current.blocks) + list(current.uses)
            if name.name in current.vars:
                return self.err("type", f"expected {want}, found var `{name.name}`", name.span,
                                f"a var, not {want}")
            hint = did_you_mean(name.name, candidates)
            if name.name in current.uses:
                hint = f"`{name.name}` is an import; name one of its blocks: " + \
                    one_of(current.uses[name.name].blocks)
            return self.err("undefined", f"`{name.name}` is not defined", name.span,
                            "no block of this name", help=hint)
        if block.kind.name not in SCHEMAS:
            return INVALID  # `unknown block kind` is reported once, at the block
        rest = parts[i + 1:]
        if len(rest) > 1:
            return self.err("undefined", f"`{'.'.join(p.name for p in parts)}` goes too deep",
                            expr.span, "unknown member")
        self.refs.append((self.current_block, block, expr.span))
        return BlockRef(block, rest[0].name if rest else None, expr.span)

    # --- evaluation -----------------------------------------------------------------------------

    def eval(self, expr: ast.Expr, typ: T.Type, scope: Scope) -> object:
        method = getattr(self, "_eval_" + type(typ).__name__.rstrip("_"))
        return method(expr, typ, scope)

    def _mismatch(self, expr: ast.Expr, typ: T.Type, extra_help: str = "") -> _Invalid:
        found = describe_value(expr)
        if isinstance(expr, ast.Name) and found == "a name":
            found = f"the name `{expr.name}`"
        return self.err("type", f"expected {typ.describe}, found {found}", expr.span,
                        f"expected {typ.describe}", help=extra_help)

    def _eval_Str(self, expr, typ, scope):
        if isinstance(expr, ast.String):
            return expr.value
        v = self._var_ref(expr, scope)
        if v is not None:
            return self._check_var_type(expr, v, typ, str)
        if isinstance(expr, ast.Name):
            return self.err("undefined", f"`{expr.name}` is not defined", expr.span,
                            "expected a string", help=f'to write text, quote it: `"{expr.name}"`'
                            + (f"; or {did_you_mean(expr.name, scope.vars)}"
                               if did_you_mean(expr.name, scope.vars) else ""))
        return self._mismatch(expr, typ)

    def _eval_Bool(self, expr, typ, scope):
        if isinstance(expr, ast.Bool):
            return expr.value
        v = self._var_ref(expr, scope)
        if v is not None:
            return self._check_var_type(expr, v, typ, bool)
        if isinstance(expr, ast.Name):
            return self._undefined_name(expr, scope, typ)
        return self._mismatch(expr, typ)

    def _check_var_type(self, expr, value, typ, py) -> object:
        if value is INVALID:
            return INVALID
        ok = isinstance(value, py) and not (py in (int, float) and isinstance(value, bool))
        if py is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            return self.err("type", f"expected {typ.describe}, found {_show(value)}",
                            expr.span, f"this var holds {_py_describe(value)}")
        return value

    def _undefined_name(self, expr: ast.Name, scope: Scope, typ: T.Type) -> _Invalid:
        hint = did_you_mean(expr.name, list(scope.vars))
        return self.err("undefined", f"`{expr.name}` is not defined", expr.span,
                        f"expected {typ.describe}", help=hint or f"write {typ.describe}, or name a "
                        "var declared with `var NAME: TYPE = VALUE`")

    def numeric(self, expr: ast.Expr, scope: Scope, top: bool = False) -> Any:
        """Arithmetic on numbers and number vars; `top`: `expr` is the whole value."""
        if isinstance(expr, ast.Number):
            return expr.value
        if isinstance(expr, ast.Neg):
            v = self.numeric(expr.operand, scope)
            return INVALID if v is INVALID else -v
        if isinstance(expr, ast.BinOp):
            left, right = self.numeric(expr.left, scope), self.numeric(expr.right, scope)
            if left is INVALID or right is INVALID:
                return INVALID
            if expr.op == "/":
                if right == 0:
                    return self.err("division-by-zero", "division by zero", expr.right.span,
                                    "this is zero")
                result = left / right
                return int(result) if isinstance(left, int) and isinstance(right, int) and \
                    result.is_integer() else result
            return {"+": left + right, "-": left - right, "*": left * right}[expr.op]
        v = self._var_ref(expr, scope)
        if v is not None:
            if v is INVALID:
                return INVALID
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                what = "expected a number" if top else "arithmetic needs numbers"
                return self.err("type", f"{what}, found {_show(v)}", expr.span,
                                f"this var holds {_py_describe(v)}")
            return v
        if isinstance(expr, ast.Name):
            return self._undefined_name(expr, scope, T.Float())
        return self.err("type", f"arithmetic needs numbers, found {describe_value(expr)}",
                        expr.span, "not a number")

    def _eval_Number(self, expr, typ: T.Number, scope):
        if not isinstance(expr, (ast.Number, ast.Neg, ast.BinOp, ast.Name, ast.Attr)):
            extra = ""
            if isinstance(expr, ast.Percent):
                extra = f"write it as a number: `{expr.value / 100:g}`"
            elif isinstance(expr, ast.String):
                extra = "remove the quotes"
            return self._mismatch(expr, typ, extra)
        value = self.numeric(expr, scope, top=True)
        if value is INVALID:
            return INVALID
        if typ.integer and isinstance(value, float):
            if not value.is_integer() or isinstance(expr, ast.Number):
                return self.err("type", f"expected an integer, found {value:g}", expr.span,
                                "not a whole number")
            value = int(value)
        if not typ.in_bounds(value):
            return self.err("out-of-range", f"{_show(value)} is out of range", expr.span,
                            f"must be {typ.bounds_text()}", labels=self._var_origin(expr, scope))
        return value

    def _var_origin(self, expr: ast.Expr, scope: Scope) -> list[Label]:
        """Where the value of a var used as `expr` was given, if elsewhere."""
        var = self.lookup_var(expr, scope)
        if var is None or var.value is None:
            return []
        return [Label(var.value.span, f"`{var.decl.name.name}` is set here")]

    def _eval_Fraction(self, expr, typ: T.Fraction, scope):
        if isinstance(expr, ast.Percent):
            value = expr.value / 100
        elif isinstance(expr, ast.Number):
            if not 0 <= expr.value <= 1:
                return self.err("type", f"expected a percentage, found {expr.text}", expr.span,
                                "a share, not a count",
                                help=f"write `{expr.text}%` for {expr.text} percent, or a fraction "
                                "between 0 and 1")
            value = float(expr.value)
        else:
            v = self._var_ref(expr, scope)
            if v is None:
                if isinstance(expr, ast.Name):
                    return self._undefined_name(expr, scope, typ)
                return self._mismatch(expr, typ)
            if v is INVALID:
                return INVALID
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return self.err("type", f"expected a percentage, found {_show(v)}", expr.span,
                                f"this var holds {_py_describe(v)}")
            value = float(v)
        if not typ.in_bounds(value):
            return self.err("out-of-range", f"{_pct(value)} is out of range", expr.span,
                            f"must be {typ.bounds_text()}", labels=self._var_origin(expr, scope))
        return value

    def _eval_Size(self, expr, typ: T.Size, scope):
        if isinstance(expr, ast.Size):
            unit = T.SIZE_UNITS.get(expr.unit.name)
            if unit is None:
                units = [u for u, (dim, _) in T.SIZE_UNITS.items() if dim == typ.dimension]
                return self.err("unknown-unit", f"unknown unit `{expr.unit.name}`", expr.unit.span,
                                "not a unit", help=did_you_mean(expr.unit.name, units) or
                                f"units here: {one_of(units)}")
            dim, scale = unit
            if dim != typ.dimension:
                return self.err("type", f"expected {typ.describe}, found a size in {dim}",
                                expr.span, f"{dim}, not {typ.dimension}")
            value = expr.value * scale
            if isinstance(value, float) and not value.is_integer():
                return self.err("type", "a size must be a whole number of units", expr.span,
                                "not whole")
            value = int(value)
        elif isinstance(expr, ast.Number):
            example = "tokens" if typ.dimension == "tokens" else "MiB"
            return self.err("type", f"`{expr.text}` needs a unit", expr.span, "no unit",
                            help=f"write `{expr.text} {example}`")
        else:
            var = self.lookup_var(expr, scope)
            if var is None:
                v = self._var_ref(expr, scope)  # reports `var.unknown`
                return INVALID if v is INVALID else self._mismatch(expr, typ)
            var_type = self.var_type(var)
            value = self.var_value(scope, var.decl.name.name, expr.span)
            if value is INVALID:
                return INVALID
            if not isinstance(var_type, T.Size) or var_type.dimension != typ.dimension:
                return self.err("type", f"expected {typ.describe}", expr.span,
                                f"this var holds {_py_describe(value)}",
                                labels=[Label(var.decl.type.span, "declared here")])
        if value < typ.lo:
            return self.err("out-of-range", f"{value} is out of range", expr.span,
                            f"must be at least {typ.lo}")
        return value

    def _eval_Symbol(self, expr, typ: T.Symbol, scope):
        if isinstance(expr, ast.Name):
            var = self.lookup_var(expr, scope)
            if expr.name in typ.choices or (typ.open and var is None):
                if var is not None:
                    return self.err("ambiguous-name", f"`{expr.name}` is both a var and a "
                                    f"{typ.what}", expr.span, "ambiguous",
                                    labels=[Label(var.decl.name.span, "var declared here")],
                                    help=f"write `var.{expr.name}` for the var, or rename it")
                return expr.name
            if var is not None:
                value = self.var_value(scope, expr.name, expr.span)
                if value is INVALID:
                    return INVALID
                if isinstance(value, str) and (typ.open or value in typ.choices):
                    return value
                return self.err("type", f"expected {typ.describe}, found {_show(value)}",
                                expr.span, f"the var holds {_show(value)}",
                                help=f"choose one of {one_of(typ.choices)}")
            hint = did_you_mean(expr.name, typ.choices)
            return self.err("unknown-value", f"unknown {typ.what} `{expr.name}`", expr.span,
                            f"not a {typ.what}", help=hint or f"choose one of {one_of(typ.choices)}")
        if isinstance(expr, ast.Attr):
            v = self._var_ref(expr, scope)
            if v is not None:
                if v is INVALID:
                    return INVALID
                if isinstance(v, str) and (typ.open or v in typ.choices):
                    return v
                return self.err("type", f"expected {typ.describe}, found {_show(v)}", expr.span,
                                "not allowed here", help=f"choose one of {one_of(typ.choices)}")
        if isinstance(expr, ast.String) and (typ.open or expr.value in typ.choices):
            return self.err("type", f"expected {typ.describe}, found a string", expr.span,
                            "a string", help=f"write it without quotes: `{expr.value}`")
        if typ.choices:
            return self._mismatch(expr, typ, f"choose one of {one_of(typ.choices)}")
        return self._mismatch(expr, typ)

    def _eval_ListOf(self, expr, typ: T.ListOf, scope):
        if isinstance(expr, ast.ListExpr):
            items = [self.eval(item, typ.item, scope) for item in expr.items]
            if any(i is INVALID for i in items):
                return INVALID
        else:
            v = self._var_ref(expr, scope)
            if v is None:
                single = typ.item.describe
                return self._mismatch(expr, typ, f"a single value needs brackets: `[{expr.span.text}]`"
                                      if not isinstance(expr, ast.Call) or single else "")
            if v is INVALID:
                return INVALID
            if not isinstance(v, tuple):
                return self.err("type", f"expected {typ.describe}", expr.span,
                                f"this var holds {_py_describe(v)}")
            items = list(v)
            if isinstance(typ.item, T.Symbol):
                bad = [i for i in items if not isinstance(i, str) or
                       not (typ.item.open or i in typ.item.choices)]
                if bad:
                    return self.err("unknown-value", f"unknown {typ.item.what} {_show(bad[0])} in "
                                    "the var's list", expr.span, "from this var",
                                    help=did_you_mean(str(bad[0]), typ.item.choices))
        if len(items) < typ.min_len:
            return self.err("out-of-range", "the list is empty", expr.span,
                            f"needs at least {typ.min_len} item")
        return tuple(items)

    def _eval_Any(self, expr, typ, scope):
        if isinstance(expr, (ast.String, ast.Bool)):
            return expr.value
        if isinstance(expr, ast.Number):
            return expr.value
        if isinstance(expr, ast.Percent):
            return expr.value / 100
        if isinstance(expr, ast.Size):
            unit = T.SIZE_UNITS.get(expr.unit.name)
            if unit is None:
                return self.err("unknown-unit", f"unknown unit `{expr.unit.name}`", expr.unit.span,
                                "not a unit", help=did_you_mean(expr.unit.name, T.SIZE_UNITS))
            return (unit[0], int(expr.value * unit[1]))
        if isinstance(expr, ast.ListExpr):
            items = [self._eval_Any(i, typ, scope) for i in expr.items]
            return INVALID if any(i is INVALID for i in items) else tuple(items)
        if isinstance(expr, ast.Name) and self.lookup_var(expr, scope) is None:
            return expr.name  # a bare name in a list var: a symbol such as q_proj
        v = self._var_ref(expr, scope)
        if v is not None:
            return v
        if isinstance(expr, (ast.Neg, ast.BinOp)):
            return self.numeric(expr, scope)
        return self.err("type", f"expected a literal value, found {describe_value(expr)}",
                        expr.span, "not a literal")

    def _eval_OneOf(self, expr, typ: T.OneOf, scope):
        funcs = typ.funcs()
        if isinstance(expr, ast.Call):
            if not isinstance(expr.func, ast.Name):
                return self._mismatch(expr, typ)
            func = funcs.get(expr.func.name)
            if func is None:
                for o in typ.options:
                    if isinstance(o, T.ListOf) and isinstance(o.item, T.OneOf) and \
                            expr.func.name in o.item.funcs():
                        return self.eval(expr, o.item.funcs()[expr.func.name], scope)
                return self.err("unknown-function", f"`{expr.func.name}` is not allowed here",
                                expr.func.span, "unknown function",
                                help=did_you_mean(expr.func.name, funcs) or
                                f"expected {typ.describe}")
            return self.eval(expr, func, scope)
        if isinstance(expr, ast.ListExpr):
            for o in typ.options:
                if isinstance(o, T.ListOf):
                    return self.eval(expr, o, scope)
        symbols = typ.symbols()
        if isinstance(expr, (ast.Name, ast.Attr)) and (symbols or self.lookup_var(expr, scope)):
            if isinstance(expr, ast.Name) and expr.name in funcs:
                return self.err("type", f"`{expr.name}` is a function", expr.span,
                                "missing arguments", help=f"call it: `{expr.name}(...)`")
            if symbols:
                return self._eval_Symbol(expr, T.Symbol(symbols, _symbol_what(typ)), scope)
        for o in typ.options:
            if isinstance(o, (T.Str, T.Number)) and _fits(expr, o):
                return self.eval(expr, o, scope)
        return self._mismatch(expr, typ)

    def _eval_Func(self, expr, func: T.Func, scope):
        if not isinstance(expr, ast.Call) or not isinstance(expr.func, ast.Name) or \
                expr.func.name != func.name:
            return self._mismatch(expr, func)
        args: dict[str, object] = {}
        given: dict[str, ast.Expr] = {}
        positional = [p for p in func.params if p.positional]
        ok = True
        for i, arg in enumerate(expr.args):
            if i >= len(positional):
                self.err("bad-argument", f"`{func.name}` takes at most {len(positional)} "
                         f"positional argument{'s' if len(positional) != 1 else ''}", arg.span,
                         "extra argument", help=_signature_help(func))
                ok = False
                continue
            args[positional[i].name] = self.eval(arg, positional[i].type, scope)
            given[positional[i].name] = arg
        for kw in expr.kwargs:
            p = func.param(kw.name.name)
            if p is None:
                self.err("unknown-argument", f"`{func.name}` has no argument `{kw.name.name}`",
                         kw.name.span, "unknown argument",
                         help=did_you_mean(kw.name.name, [q.name for q in func.params]) or
                         f"its arguments: {one_of(q.name for q in func.params)}")
                ok = False
                continue
            if p.name in args:
                self.err("duplicate-argument", f"argument `{p.name}` is given twice", kw.span,
                         "given again")
                ok = False
                continue
            args[p.name] = self.eval(kw.value, p.type, scope)
            given[p.name] = kw.value
        for p in func.params:
            if p.name not in args:
                if p.required:
                    self.err("missing-argument", f"`{func.name}` needs `{p.name}`", expr.span,
                             f"`{p.name}` is missing",
                             help=(f"add `{p.name} = ...`" if not p.positional else
                                   f"it is called as {_example_call(func)}")
                             + (f"; `{p.name}` is {p.doc}" if p.doc else ""))
                    ok = False
                else:
                    args[p.name] = p.default
        if not ok or any(v is INVALID for v in args.values()):
            return INVALID
        for name, arg in given.items():
            value = args[name]
            if (func.name, name) in LOCAL_PATHS and isinstance(value, str) and \
                    (func.name != LM_EVAL.name or is_task_file(value)):
                self._local_path(func.name, name, value, arg)
        return FuncValue(func.name, args, expr.span)

    def _local_path(self, func: str, param: str, value: str, at: ast.Expr) -> None:
        """A file or folder the build will read, named relative to the formula, must exist.
        Paths under `~` or absolute ones name places on the machine that builds, which need
        not be the one that checks (CI), and are looked for when the build reads them."""
        block = self.current_block
        if block is None or not value or value.startswith("~") or os.path.isabs(value):
            return
        # as lowering resolves them: suites from the file that holds the eval, the rest from
        # the formula the block belongs to
        base = block.span.source.path if func in ("prompts", LM_EVAL.name) else block.scope.path
        kind, what = LOCAL_PATHS[(func, param)]
        path = os.path.normpath(os.path.join(os.path.dirname(base), value))
        if kind == "glob":
            fixed = re.split(r"[*?\[]", path, 1)[0]
            if fixed == path:
                kind = "file"
            else:
                path = os.path.dirname(fixed) or "."
                kind, what = "folder", f"the folder of {what}"
        if kind == "folder" and os.path.isdir(path) or kind == "file" and os.path.isfile(path):
            return
        exists = os.path.exists(path)
        self.err("missing-file", f"{what} `{value}` " + (
            f"is not a {kind}" if exists else "does not exist"), at.span,
            f"{'found' if exists else 'no'} {kind} {path}" if kind == "folder" or not exists
            else f"{path} is not a file",
            help=f"paths are relative to the folder of the formula that names them, `{base}`")

    def lora_targets(self, call: ast.Expr, targets: tuple, model: BlockDef | None,
                     source: object) -> None:
        """LoRA targets that name no module of the model, where its family is known: made by
        `init`, or a local folder or a hub model in the local cache whose config.json says."""
        family = model_family(model, source, self.program.root.path)
        if family is None or family not in LORA_MODULES:
            return
        names = LORA_MODULES[family]
        nodes = _target_nodes(call)
        for t in targets:
            if t in names or t in ("all-linear", "lm_head", "embed_tokens"):
                continue
            at = nodes.get(t) or nodes.get("") or call
            self.err("unknown-target", f"no module of a {family} model is called `{t}`", at.span,
                     "no such module", labels=[Label(model.name.span, f"a {family} model")]
                     if model is not None else [],
                     help=_closest(t, names) + f"its linear modules: {one_of(names)}, or `all-linear`")

    def _eval_Ref(self, expr, typ: T.Ref, scope):
        if isinstance(expr, ast.Name) and self.lookup_var(expr, scope) and expr.name not in scope.blocks:
            return self._mismatch(expr, typ)
        ref = self.resolve_ref(expr, scope, " or ".join(_kind_article(k) for k in typ.kinds))
        if ref is INVALID:
            return INVALID
        if ref.block.kind.name not in typ.kinds:
            return self.err("wrong-kind", f"expected {' or '.join(_kind_article(k) for k in typ.kinds)}"
                            f", but `{ref.block.name.name}` is {_kind_article(ref.block.kind.name)}",
                            expr.span, f"{_kind_article(ref.block.kind.name)}",
                            labels=[Label(ref.block.name.span, "defined here")])
        if ref.member is not None:
            return self.err("undefined", f"`{expr.span.text}`: a {ref.block.kind.name} has no "
                            f"member here", expr.span, "name the block alone",
                            help=f"write `{ref.block.name.name}`")
        return ref

    def _eval_DataRef(self, expr, typ, scope):
        if isinstance(expr, ast.Where):
            base = self._eval_DataRef(expr.base, typ, scope)
            if base is INVALID:
                return INVALID
            view, block = base
            if view.kind != "corpus":
                return self.err("wrong-kind", "`where` filters a corpus", expr.base.span,
                                f"`{view.name}` is preference pairs",
                                help="filter the corpus the pairs are built from")
            self._condition_text = expr.cond.span.text
            cond = self.predicate(expr.cond, scope)
            if cond is INVALID:
                return INVALID
            where = cond if view.where is None else plan.AllOf((view.where, cond))
            return plan.DataView(view.kind, view.name, view.split, where), block
        ref = self.resolve_ref(expr, scope, "a corpus or pairs")
        if ref is INVALID:
            return INVALID
        kind = ref.block.kind.name
        if kind not in ("corpus", "pairs"):
            return self.err("wrong-kind", f"expected a corpus or pairs, but `{ref.block.name.name}` "
                            f"is {_kind_article(kind)}", expr.span, f"{_kind_article(kind)}",
                            labels=[Label(ref.block.name.span, "defined here")])
        split = ref.member or "train"
        if kind == "corpus" and split not in ("train", "holdout"):
            return self.err("undefined", f"a corpus has no `{split}`", expr.span, "unknown split",
                            help=did_you_mean(split, ("train", "holdout")) or
                            "a corpus has `.train` and `.holdout`")
        if kind == "pairs" and ref.member is not None:
            return self.err("undefined", f"pairs have no `{split}`", expr.span, "unknown member",
                            help=f"write `{ref.block.name.name}`")
        return plan.DataView(kind, ref.block.qualified, split), ref.block

    def _eval_Target(self, expr, typ, scope):
        ref = self.resolve_ref(expr, scope, "a model, stage, assemble or export output")
        if ref is INVALID:
            return INVALID
        kind = ref.block.kind.name
        if kind not in ("model", "stage", "assemble", "export"):
            return self.err("wrong-kind", f"`{ref.block.name.name}` is {_kind_article(kind)}, "
                            "not something that can be evaluated", expr.span, "not a model",
                            help="evaluate a model, a stage, an assemble or an export output "
                                 "such as `gguf.q8_0`")
        if kind != "export" and ref.member is not None:
            return self.err("undefined", f"{_kind_article(kind)} has no member `{ref.member}`",
                            expr.span, "unknown member", help=f"write `{ref.block.name.name}`")
        return ref

    # --- conditions -------------------------------------------------------------------------

    def _eval_Predicate(self, expr, typ, scope):
        self._condition_text = expr.span.text
        return self.predicate(expr, scope)

    def predicate(self, expr: ast.Expr, scope: Scope) -> plan.Pred | _Invalid:
        if isinstance(expr, ast.BoolOp):
            left, right = self.predicate(expr.left, scope), self.predicate(expr.right, scope)
            if left is INVALID or right is INVALID:
                return INVALID
            cls = plan.AllOf if expr.op == "and" else plan.AnyOf
            parts: list[plan.Pred] = []
            for p in (left, right):
                parts.extend(p.parts if isinstance(p, cls) else (p,))
            return cls(tuple(parts))
        if isinstance(expr, ast.Not):
            inner = self.predicate(expr.operand, scope)
            return INVALID if inner is INVALID else plan.Negate(inner)
        if isinstance(expr, ast.Bool):
            return plan.Always(expr.value)
        if isinstance(expr, ast.Compare):
            return self._comparison(expr, scope)
        hint = ""
        if isinstance(expr, ast.Name) and expr.name in METADATA_FIELDS:
            hint = f"compare it: `{expr.name} == ...`"
        return self.err("type", f"expected a condition, found {describe_value(expr)}", expr.span,
                        "not a condition", help=hint or "e.g. `role == \"polecat\" and turns >= 2`")

    def _field_name(self, expr: ast.Expr, scope: Scope) -> str | None:
        """In a condition a bare session field name is the field, even where a var shares it."""
        if isinstance(expr, ast.Name) and expr.name in METADATA_FIELDS:
            var = self.lookup_var(expr, scope)
            if var is not None and f"var.{expr.name}" not in self._condition_text:
                self.diags.append(warning(
                    "shadowed-var", f"`{expr.name}` here is the session's field, not the var",
                    expr.span, "the session's field",
                    labels=[Label(var.decl.name.span, "a var of the same name")],
                    help=f"write `var.{expr.name}` to use the var"))
            return expr.name
        return None

    def _comparison(self, expr: ast.Compare, scope: Scope) -> plan.Pred | _Invalid:
        left, right = self._field_name(expr.left, scope), self._field_name(expr.right, scope)
        op = expr.op
        if left is None and right is not None and op != "in":
            expr = ast.Compare(_mirror(op), expr.right, expr.left, expr.span)
            op, left = expr.op, right
        if left is None:
            if isinstance(expr.left, ast.Name) and self.lookup_var(expr.left, scope) is None:
                return self.err("unknown-field", f"sessions have no field `{expr.left.name}`",
                                expr.left.span, "unknown field",
                                help=did_you_mean(expr.left.name, METADATA_FIELDS) or
                                f"fields: {one_of(METADATA_FIELDS)}")
            return self.err("type", "a condition compares a session field with a value",
                            expr.span, "no session field here",
                            help=f"fields: {one_of(METADATA_FIELDS)}")
        if isinstance(expr.right, ast.Name) and expr.right.name in METADATA_FIELDS:
            return self.err("type", "a condition compares a field with a value, not two fields",
                            expr.right.span, "a field")
        py = METADATA_FIELDS[left]
        item_type = T.Str() if py is str else T.Int()
        if op == "in":
            value = self.eval(expr.right, T.ListOf(item_type, min_len=1), scope)
        else:
            if py is str and isinstance(expr.right, ast.Name) and self.lookup_var(expr.right, scope) is None:
                return self.err("undefined", f"`{expr.right.name}` is not defined", expr.right.span,
                                "not a var", help=f'to compare with the text, write `"{expr.right.name}"`')
            if py is str and op not in ("==", "!=") and left != "date":
                return self.err("type", f"`{left}` is text; compare it with `==` or `!=`", expr.span,
                                f"`{op}` on text")
            value = self.eval(expr.right, item_type, scope)
        if value is INVALID:
            return INVALID
        if left == "role":
            for v in (value if isinstance(value, tuple) else (value,)):
                if v not in ROLES:
                    self.diags.append(warning(
                        "unknown-role", f"no Gas Town role is called {_show(v)}", expr.right.span,
                        "unknown role", help=did_you_mean(str(v), ROLES) or
                        f"roles: {one_of(ROLES)}"))
        return plan.Cmp(left, op, value)

    # --- eval checks ------------------------------------------------------------------------

    def gate(self, expr: ast.Expr, scope: Scope) -> tuple | _Invalid:
        """(left, op, right, confidence, test): confidence is None, or the level that a
        `significant(COMPARISON, confidence = ...)` or `not_worse(...)` check (`test`) asks for."""
        confidence, test = None, "significant"
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.name in GATE_TESTS:
            test = expr.func.name
            if len(expr.args) != 1:
                return self.err("bad-check", f"`{test}(...)` takes one comparison", expr.span,
                                f"{len(expr.args)} comparisons" if expr.args else "no comparison",
                                help=f"e.g. `check {test}(next_action(data.holdout).tool_accuracy "
                                f"{'>' if test == 'significant' else '>='} "
                                "next_action(base, data.holdout).tool_accuracy)`")
            wrapper = self._eval_Func(ast.Call(expr.func, (), expr.kwargs, expr.span), GATE_TESTS[test], scope)
            if wrapper is INVALID:
                return INVALID
            confidence = float(wrapper.args["confidence"])
            expr = expr.args[0]
            if test == "not_worse" and isinstance(expr, ast.Compare) and expr.op in ("<", ">"):
                return self.err("bad-check", "`not_worse(...)` asks that a side be no worse, not better",
                                expr.span, f"`{expr.op}` asks for better",
                                help=f"write `{expr.op}=` (fails only where it is worse beyond the noise), "
                                f"or `significant(... {expr.op} ...)` for an improvement beyond it")
        if not isinstance(expr, ast.Compare) or expr.op in ("==", "!=", "in"):
            return self.err("bad-check", "a check compares a metric with a threshold", expr.span,
                            "not a comparison" if not isinstance(expr, ast.Compare) else
                            f"`{expr.op}` is not a gate",
                            help="e.g. `check perplexity(data.holdout) <= 12` (use <, <=, > or >=)")
        left, right = self.metric(expr.left, scope), self.metric(expr.right, scope)
        if left is INVALID or right is INVALID:
            return INVALID
        if isinstance(left, plan.Const) and isinstance(right, plan.Const):
            return self.err("bad-check", "this check compares two constants", expr.span,
                            "no metric here", help="measure something: `perplexity(...)`, "
                            "`prompts(...).pass_rate` or `eos_rate(...)`")
        return left, expr.op, right, confidence, test

    def _eval_Metric(self, expr, typ, scope):
        value = self.metric(expr, scope)
        if isinstance(value, plan.Const):
            return self.err("type", "expected a metric, found a constant", expr.span, "not a metric",
                            help=f"metrics: {one_of(METRICS)}")
        return value

    def metric(self, expr: ast.Expr, scope: Scope) -> plan.MetricExpr | _Invalid:
        if isinstance(expr, (ast.Number, ast.Percent)):
            return plan.Const(float(expr.value / 100 if isinstance(expr, ast.Percent) else expr.value))
        if isinstance(expr, ast.BinOp):
            left, right = self.metric(expr.left, scope), self.metric(expr.right, scope)
            if left is INVALID or right is INVALID:
                return INVALID
            return plan.Arith(expr.op, left, right)
        if isinstance(expr, ast.Neg):
            inner = self.metric(expr.operand, scope)
            return INVALID if inner is INVALID else plan.Arith("*", plan.Const(-1.0), inner)
        if isinstance(expr, ast.Attr) and isinstance(expr.obj, ast.Call):
            return self._metric_call(expr.obj, scope, expr.attr)
        if isinstance(expr, ast.Call):
            return self._metric_call(expr, scope, None)
        var = self.lookup_var(expr, scope)
        if var is not None:
            v = self.numeric(expr, scope)
            return INVALID if v is INVALID else plan.Const(float(v))
        if isinstance(expr, ast.Name):
            return self.err("undefined", f"`{expr.name}` is not a metric or a var", expr.span,
                            "unknown", help=did_you_mean(expr.name, list(METRICS) + list(scope.vars))
                            or f"metrics: {one_of(METRICS)}")
        return self.err("type", f"expected a metric, found {describe_value(expr)}", expr.span,
                        "not a metric")

    def _metric_call(self, expr: ast.Call, scope: Scope, attr: ast.Ident | None):
        if not isinstance(expr.func, ast.Name) or expr.func.name not in METRICS:
            name = expr.func.name if isinstance(expr.func, ast.Name) else expr.func.span.text
            return self.err("unknown-function", f"unknown metric `{name}`", expr.func.span,
                            "not a metric", help=did_you_mean(name, METRICS) or
                            f"metrics: {one_of(METRICS)}")
        func = METRICS[expr.func.name]
        target = None
        args = list(expr.args)
        kwargs = list(expr.kwargs)
        n_pos = sum(p.positional for p in func.params)
        model_kw = next((k for k in kwargs if k.name.name == "model"), None)
        if model_kw is not None:
            kwargs.remove(model_kw)
            target_expr = model_kw.value
        elif len(args) > n_pos:
            target_expr = args.pop(0)
        else:
            target_expr = None
        if target_expr is not None:
            if (isinstance(target_expr, ast.Call) and isinstance(target_expr.func, ast.Name)
                    and target_expr.func.name == TAGGED.name):
                ref: Any = self._tagged(target_expr, scope)  # bound to a TargetRef by kinds/eval
            else:
                ref = self._eval_Target(target_expr, T.Target(), scope)
            if ref is INVALID:
                return INVALID
            target = ref
        value = self._eval_Func(ast.Call(expr.func, tuple(args), tuple(kwargs), expr.span), func, scope)
        if value is INVALID:
            return INVALID
        attrs = METRIC_ATTRS.get(func.name, ())
        if func.name == LM_EVAL.name:
            return self._lm_eval(expr, value, target, attr)
        if attr is None and attrs:
            return self.err("bad-check", f"`{func.name}(...)` gives several figures; pick one",
                            expr.span, "pick a figure", help=f"write `{expr.span.text}.{attrs[0]}`")
        if attr is not None and attr.name not in attrs:
            return self.err("undefined", f"`{func.name}(...)` has no figure `{attr.name}`",
                            attr.span, "unknown figure",
                            help=did_you_mean(attr.name, attrs) or
                            (f"figures: {one_of(attrs)}" if attrs else "it is a number already"))
        data = None
        rest = {}
        for k, v in value.args.items():
            if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], plan.DataView):
                data = v[0]
                if func.name == "next_action" and v[0].kind != "corpus":
                    return self.err("type", "next_action measures a corpus's sessions, not pairs",
                                    expr.args[-1].span if expr.args else expr.span, "pairs",
                                    help="name a corpus split: `next_action(sessions.holdout)`")
                self._check_holdout(v[0], v[1], expr)
            else:
                rest[k] = v
        return plan.MetricCall(func.name, target, data, tuple(sorted(rest.items())),
                               attr.name if attr is not None else None)

    def _lm_eval(self, expr: ast.Call, value: FuncValue, target, attr: ast.Ident | None):
        """`lm_eval(TASK).FIGURE`: any figure may be named (the task says which it reports, at
        build time); the harness must be installed, and it reads model folders only."""
        if attr is None:
            return self.err("bad-check", "`lm_eval(...)` gives the figures its task reports; pick one",
                            expr.span, "pick a figure", help=f"write `{expr.span.text}.acc`; tasks "
                            f"commonly report {one_of(LM_EVAL_FIGURES)}")
        if importlib.util.find_spec("lm_eval") is None:
            return self.err("missing-extra", "`lm_eval` needs lm-evaluation-harness, which is not "
                            "installed", expr.func.span, "not installed",
                            help="install the extra: `pip install 'formula[lmeval]'`")
        block = target.target if isinstance(target, TaggedRef) else target
        if isinstance(block, BlockRef) and block.block.kind.name == "export":
            return self.err("wrong-kind", "lm_eval measures a model folder, not an exported file",
                            block.span, "an export", help="measure the folder it was exported from, "
                            "an `assemble`, a `stage` or a `model`")
        return plan.MetricCall(LM_EVAL.name, target, None, tuple(sorted(value.args.items())), attr.name)

    def _tagged(self, expr: ast.Call, scope: Scope) -> TaggedRef | _Invalid:
        value = self._eval_Func(expr, TAGGED, scope)
        if value is INVALID:
            return INVALID
        tag = value.args["tag"]
        if not TAG_NAME.fullmatch(tag):
            return self.err("bad-argument", f"{_show(tag)} is not a tag name", expr.args[0].span,
                            "not a tag", help="tags are named with letters, digits, `.`, `_` and "
                            "`-`, as given to `formula tag NAME FORMULA`")
        return TaggedRef(tag, value.args.get("target"), expr.span)

    def _check_holdout(self, view: plan.DataView, block: BlockDef, at: ast.Expr) -> None:
        self.holdout_uses.append((view, block, at))
        if view.kind == "corpus" and view.split == "train":
            self.diags.append(warning(
                "eval-on-train", f"this measures `{block.name.name}`'s training split", at.span,
                "training data", help=f"measure held-out data: `{block.name.name}.holdout`"))


# (function, argument) -> (file, folder or glob; what it is), for paths the build reads.
LOCAL_PATHS = {
    ("gastown", "projects"): ("folder", "the projects folder"),
    ("gastown", "beads"): ("file", "the beads export"),
    ("transcripts", "glob"): ("glob", "the transcripts"),
    ("sidecar", "path"): ("file", "the metadata file"),
    ("path", "dir"): ("folder", "the model folder"),
    ("prompts", "file"): ("file", "the prompt suite"),
    ("lm_eval", "task"): ("file", "the task file"),
}

# The linear modules LoRA can target, by model family (transformers' `model_type`).
_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_MODULES = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE, "gemma2": _LLAMA_LIKE, "granite": _LLAMA_LIKE, "olmo2": _LLAMA_LIKE,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}


def model_family(model: BlockDef | None, source: object, formula: str | None = None) -> str | None:
    """A model's `model_type`, where it can be known without a download: from `init`, a local
    folder's config.json, or a hub model's in the local cache, at the commit the lock file of
    `formula` (the root formula) pins, else at what its revision names in the cache."""
    if not isinstance(source, FuncValue):
        return None
    if source.name == "init":
        return source.args.get("arch")
    config = None
    if source.name == "path" and model is not None:
        folder = os.path.expanduser(source.args["dir"])
        config = os.path.join(os.path.dirname(os.path.abspath(model.scope.path)), folder, "config.json")
    elif source.name == "hub":
        repo, revision = source.args["id"], source.args.get("revision") or "main"
        config = _cached_hub_config(repo, _pinned_commit(formula, repo, revision) or revision)
    if not config:
        return None
    try:
        with open(config, encoding="utf-8") as fh:
            kind = json.load(fh).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _pinned_commit(formula: str | None, repo: str, revision: str) -> str | None:
    if formula is None:
        return None
    try:
        pins = hublock.read(hublock.lock_path(formula))
    except hublock.LockError:
        return None  # the model's own check says what is wrong with the lock file
    pin = pins.get((repo, revision)) if pins else None
    return pin.commit if pin else None


def _cached_hub_config(repo: str, revision: str) -> str | None:
    """config.json of a hub model in the local Hugging Face cache (no network, no import)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    folder = os.path.join(cache, "models--" + repo.replace("/", "--"))
    commit = revision
    try:
        with open(os.path.join(folder, "refs", revision), encoding="utf-8") as fh:
            commit = fh.read().strip()
    except OSError:
        pass
    path = os.path.join(folder, "snapshots", commit, "config.json")
    return path if os.path.isfile(path) else None


def _closest(name: str, names) -> str:
    near = near_names(name, names)
    if not near:
        return ""
    best = min(edit_distance(name, n) for n in near)
    return f"did you mean `{next(n for n in near if edit_distance(name, n) == best)}`? "


def _target_nodes(call: ast.Expr) -> dict[str, ast.Expr]:
    """The names in a `lora(targets = [...])` call, to point at the one that is wrong."""
    out: dict[str, ast.Expr] = {}
    if isinstance(call, ast.Call):
        for kw in call.kwargs:
            if kw.name.name == "targets":
                items = kw.value.items if isinstance(kw.value, ast.ListExpr) else (kw.value,)
                for item in items:
                    if isinstance(item, ast.Name):
                        out.setdefault(item.name, item)
                    else:
                        out.setdefault(str(getattr(item, "value", "")), item)
                out.setdefault("", kw.value)
    return out


def _fits(expr: ast.Expr, typ: T.Type) -> bool:
    if isinstance(typ, T.Str):
        return isinstance(expr, (ast.String, ast.Name, ast.Attr))
    if isinstance(typ, T.Number):
        return isinstance(expr, (ast.Number, ast.Neg, ast.BinOp, ast.Name, ast.Attr))
    return False


def _symbol_what(typ: T.OneOf) -> str:
    for o in typ.options:
        if isinstance(o, T.Symbol):
            return o.what
    return "value"


def _signature_help(func: T.Func) -> str:
    named = [p.name for p in func.params if not p.positional]
    sig = f"`{func.name}({', '.join(p.name for p in func.params if p.positional)})`"
    return f"it is called as {sig}" + (f"; name the others: {one_of(named)}" if named else "")


def _example_call(func: T.Func) -> str:
    pos = [p.name for p in func.params if p.positional and p.required]
    return f"`{func.name}({', '.join(pos)})`"


def _mirror(op: str) -> str:
    return {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(op, op)


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("tokens", "bytes"):
        return f"{value[1]} {value[0]}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _py_describe(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple) and len(value) == 2 and value[0] in ("tokens", "bytes"):
        return f"a size in {value[0]}"
    if isinstance(value, tuple):
        return "a list"
    return "a value"


def _pct(v: float) -> str:
    x = round(v * 100, 6)
    return f"{int(x) if float(x).is_integer() else x}%"

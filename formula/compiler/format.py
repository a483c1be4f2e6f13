"""AST (+ comments) → canonical text. `formula fmt` is this, applied per file.

Layout: two-space indents, one item per line, `=` aligned within runs of consecutive fields,
var declarations in columns, at most one blank line kept where the author left one, a blank line
around every block, long calls and lists broken one argument per line. Comments are kept: a
comment on its own line stays before the item that follows it, a trailing comment stays on its
line.
"""

from __future__ import annotations

import re

from . import ast
from .diagnostics import Diagnostic
from .parse import parse, undecodable
from .source import Source, decode

INDENT = "  "
MAX_WIDTH = 100

# Binding strength of each expression form; a child weaker than its slot needs parentheses.
_WHERE, _OR, _AND, _NOT, _CMP, _SUM, _PRODUCT, _UNARY, _POSTFIX, _ATOM = range(1, 11)


def format_bytes(path: str, data: bytes | str) -> tuple[str | None, list[Diagnostic]]:
    """A file's bytes in the canonical layout (UTF-8, no byte-order mark); None and the
    diagnostics when they are not a formula that parses."""
    text, bad = decode(data)
    if bad is not None:
        return None, [undecodable(path, text, bad)]
    return format_source(Source(path, text))


def format_source(source: Source) -> tuple[str | None, list[Diagnostic]]:
    module, diagnostics = parse(source)
    if diagnostics:
        return None, diagnostics
    return _Formatter(module).run(), []


def expr_text(e: ast.Expr, need: int = 0) -> str:
    """An expression on one line, with the parentheses its precedence needs and no others."""
    text, prec = _expr(e)
    return f"({text})" if prec < need else text


def _expr(e: ast.Expr) -> tuple[str, int]:
    if isinstance(e, ast.Where):
        return f"{expr_text(e.base, _OR)} where {expr_text(e.cond, _OR)}", _WHERE
    if isinstance(e, ast.BoolOp):
        p = _OR if e.op == "or" else _AND
        return f"{expr_text(e.left, p)} {e.op} {expr_text(e.right, p + 1)}", p
    if isinstance(e, ast.Not):
        # `not (a < b)` keeps its parentheses: `not a < b` reads as `(not a) < b`.
        return f"not {expr_text(e.operand, _SUM)}", _NOT
    if isinstance(e, ast.Compare):
        return f"{expr_text(e.left, _SUM)} {e.op} {expr_text(e.right, _SUM)}", _CMP
    if isinstance(e, ast.BinOp):
        p = _SUM if e.op in "+-" else _PRODUCT
        return f"{expr_text(e.left, p)} {e.op} {expr_text(e.right, p + 1)}", p
    if isinstance(e, ast.Neg):
        return f"-{expr_text(e.operand, _UNARY)}", _UNARY
    if isinstance(e, ast.Attr):
        return f"{expr_text(e.obj, _POSTFIX)}.{e.attr.name}", _POSTFIX
    if isinstance(e, ast.Call):
        return f"{expr_text(e.func, _POSTFIX)}({', '.join(_args(e))})", _POSTFIX
    if isinstance(e, ast.ListExpr):
        return "[" + ", ".join(expr_text(i) for i in e.items) + "]", _ATOM
    if isinstance(e, ast.Number):
        return e.text, _ATOM
    if isinstance(e, ast.String):
        return e.raw, _ATOM
    if isinstance(e, ast.Bool):
        return ("true" if e.value else "false"), _ATOM
    if isinstance(e, ast.Percent):
        return f"{e.text}%", _ATOM
    if isinstance(e, ast.Size):
        return f"{e.text} {e.unit.name}", _ATOM
    if isinstance(e, ast.Name):
        return e.name, _ATOM
    raise TypeError(f"unknown expression node {type(e).__name__}")


def _args(call: ast.Call) -> list[str]:
    return [expr_text(a) for a in call.args] + [f"{k.name.name} = {expr_text(k.value)}"
                                                 for k in call.kwargs]


def _broken(e: ast.Expr, indent: str) -> list[str] | None:
    """A long call or list, one argument per line; None if it cannot be broken."""
    if isinstance(e, ast.Call) and (e.args or e.kwargs):
        head, parts, close = f"{expr_text(e.func, _POSTFIX)}(", _args(e), ")"
    elif isinstance(e, ast.ListExpr) and e.items:
        head, parts, close = "[", [expr_text(i) for i in e.items], "]"
    else:
        return None
    return [head] + [f"{indent}{INDENT}{p}," for p in parts] + [f"{indent}{close}"]


class _Comments:
    def __init__(self, module: ast.Module):
        self.items = sorted(module.comments, key=lambda c: c.span.start)
        self.i = 0

    def before(self, offset: int) -> list[ast.Comment]:
        out = []
        while self.i < len(self.items) and self.items[self.i].span.start < offset:
            out.append(self.items[self.i])
            self.i += 1
        return out

    def trailing(self, line: int) -> str:
        if self.i < len(self.items) and self.items[self.i].span.line == line:
            c = self.items[self.i]
            self.i += 1
            return "  " + c.text.rstrip()
        return ""

    def peek_start(self, after: int = -1) -> int | None:
        """Where the next comment not yet written starts, passing over those before `after`
        (a comment inside the previous member's value is written with that member)."""
        j = self.i
        while j < len(self.items) and self.items[j].span.start < after:
            j += 1
        return self.items[j].span.start if j < len(self.items) else None


class _Formatter:
    def __init__(self, module: ast.Module):
        self.module = module
        self.text = module.source.text
        self.comments = _Comments(module)
        self.out: list[str] = []

    def run(self) -> str:
        prev_end, prev_block = None, False
        items = list(self.module.items)
        i = 0
        while i < len(items):
            item = items[i]
            is_block = isinstance(item, ast.Block) or (isinstance(item, ast.Use) and bool(item.args))
            start = self._lead_start(item.span.start, prev_end if prev_end is not None else -1)
            if prev_end is not None and (is_block or prev_block or self._gap(prev_end, start)):
                self.out.append("")
            # runs of vars or overrides are laid out in columns together
            if isinstance(item, (ast.VarDecl, ast.Override)):
                run: list[ast.Item] = [item]
                while (i + 1 < len(items) and type(items[i + 1]) is type(item)
                       and not self._gap(run[-1].span.end, self._lead_start(items[i + 1].span.start,
                                                                            run[-1].span.end))
                       and self._no_comment_between(run[-1].span.end, items[i + 1].span.end)):
                    i += 1
                    run.append(items[i])
                self._emit_run(run, "")
                prev_end = run[-1].span.end
            else:
                self._leading(item.span.start, "")
                self._item(item)
                prev_end = item.span.end
            prev_block = is_block
            i += 1
        rest = self.comments.before(len(self.text) + 1)
        if rest and self.out:
            if prev_end is not None and self._gap(prev_end, rest[0].span.start):
                self.out.append("")
        self.out.extend(c.text.rstrip() for c in rest)
        return "\n".join(self.out).rstrip("\n") + "\n"

    # --- helpers -------------------------------------------------------------------------------

    def _gap(self, end: int, start: int) -> bool:
        return bool(re.search(r"\n[ \t\r]*\n", self.text[end:start]))

    def _lead_start(self, offset: int, after: int = -1) -> int:
        nxt = self.comments.peek_start(after)
        return nxt if nxt is not None and nxt < offset else offset

    def _no_comment_between(self, end: int, start: int) -> bool:
        nxt = self.comments.peek_start(end)
        return nxt is None or not (end <= nxt < start) or \
            self.module.source.line_col(nxt)[0] == self.module.source.line_col(end)[0]

    def _leading(self, offset: int, indent: str) -> None:
        prev = None
        for c in self.comments.before(offset):
            if prev is not None and self._gap(prev.span.end, c.span.start):
                self.out.append("")
            self.out.append(indent + c.text.rstrip())
            prev = c
        if prev is not None and self._gap(prev.span.end, offset) and self.out:
            self.out.append("")

    def _last_line(self, node) -> int:
        return self.module.source.line_col(max(node.span.end - 1, node.span.start))[0]

    # --- items ---------------------------------------------------------------------------------

    def _item(self, item: ast.Item) -> None:
        if isinstance(item, ast.Block):
            self._block(f"{item.kind.name} {item.name.name}", item.body, item, "")
        elif isinstance(item, ast.Use):
            head = f"use {item.path.raw} as {item.alias.name}"
            if item.args:
                self._block(head, item.args, item, "")
            else:
                self.out.append(head + self.comments.trailing(self._last_line(item)))
        elif isinstance(item, ast.Extends):
            self.out.append(f"extends {item.path.raw}" + self.comments.trailing(self._last_line(item)))
        else:
            self._emit_run([item], "")

    def _block(self, head: str, body: tuple, node, indent: str) -> None:
        first_line = node.span.line
        if not body and not self._has_comment_inside(node):
            self.out.append(f"{indent}{head} {{}}" + self.comments.trailing(self._last_line(node)))
            return
        self.out.append(f"{indent}{head} {{" + self.comments.trailing(first_line))
        inner = indent + INDENT
        members = list(body)
        i, prev_end = 0, None
        while i < len(members):
            m = members[i]
            start = self._lead_start(m.span.start, prev_end if prev_end is not None else -1)
            if prev_end is not None and self._gap(prev_end, start):
                self.out.append("")
            self._leading(m.span.start, inner)
            if isinstance(m, ast.Field):
                run = [m]
                while (i + 1 < len(members) and isinstance(members[i + 1], ast.Field)
                       and not self._gap(run[-1].span.end, self._lead_start(members[i + 1].span.start,
                                                                            run[-1].span.end))
                       and self._no_comment_between(run[-1].span.end, members[i + 1].span.end)):
                    i += 1
                    run.append(members[i])
                self._emit_run(run, inner)
                prev_end = run[-1].span.end
            elif isinstance(m, ast.Check):
                self._line(inner, f"check {expr_text(m.expr)}", m, None)
                prev_end = m.span.end
            else:
                self._block(m.name.name, m.body, m, inner)
                prev_end = m.span.end
            i += 1
        closing = node.span.end - 1
        rest = self.comments.before(closing)
        if rest:
            if prev_end is not None and self._gap(prev_end, rest[0].span.start):
                self.out.append("")
            self.out.extend(inner + c.text.rstrip() for c in rest)
        self.out.append(f"{indent}}}" + self.comments.trailing(self._last_line(node)))

    def _has_comment_inside(self, node) -> bool:
        nxt = self.comments.peek_start()
        return nxt is not None and node.span.start <= nxt < node.span.end and \
            self.module.source.line_col(nxt)[0] != node.span.line

    def _line(self, indent: str, text: str, node, value: ast.Expr | None) -> None:
        """One member, broken over lines when too long; its trailing comment kept."""
        inside = [c for c in self.comments.before(node.span.end)]
        for c in inside:  # comments inside a multi-line expression move above it
            self.out.append(indent + c.text.rstrip())
        trailing = self.comments.trailing(self._last_line(node))
        if value is not None and len(indent + text) > MAX_WIDTH:
            prefix = text[: len(text) - len(expr_text(value))]
            broken = _broken(value, indent)
            if broken is not None:
                self.out.append(indent + prefix + broken[0])
                self.out.extend(broken[1:-1])
                self.out.append(broken[-1] + trailing)
                return
        self.out.append(indent + text + trailing)

    def _emit_run(self, run: list, indent: str) -> None:
        if isinstance(run[0], ast.VarDecl):
            rows = [self._var_columns(v) for v in run]
        else:
            rows = [[_target(m) if isinstance(m, ast.Override) else m.name.name,
                     f"= {expr_text(m.value)}"] for m in run]
        widths = [max(len(r[c]) for r in rows if len(r) > c + 1) if any(len(r) > c + 1 for r in rows)
                  else 0 for c in range(max(len(r) for r in rows))]
        for k, (node, row) in enumerate(zip(run, rows)):
            if k:
                self._leading(node.span.start, indent)
            cells = [cell.ljust(widths[c]) if c < len(row) - 1 else cell for c, cell in enumerate(row)]
            value = getattr(node, "value", None) if not isinstance(node, ast.VarDecl) else None
            self._line(indent, " ".join(cells).rstrip(), node, value)

    def _var_columns(self, v: ast.VarDecl) -> list[str]:
        cols = [f"var {v.name.name}:", v.type.name]
        if v.required:
            cols.append("required")
        elif v.default is not None:
            cols.append(f"= {expr_text(v.default)}")
        rest = []
        if v.doc is not None:
            rest.append(v.doc.raw)
        if v.enum is not None:
            rest.append(f"enum {expr_text(v.enum)}")
        if v.pattern is not None:
            rest.append(f"pattern {v.pattern.raw}")
        if rest:
            if len(cols) == 2:
                cols.append("")
            cols.append(" ".join(rest))
        return cols


def _target(o: ast.Override) -> str:
    return ".".join(p.name for p in o.target)

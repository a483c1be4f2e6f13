"""Command-line overrides in Hydra's syntax (`stage.sft.lr=1e-4`, `~stage.sft.seed`).

Hydra's own override parser splits each argument and finds sweeps; the value is then read with
the formula expression parser, so an override is checked exactly like the same text in a file.
Hydra is imported only when there are overrides, keeping `formula check` fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ast
from .diagnostics import Diagnostic, Label, error
from .parse import parse_expression
from .resolve import CliOverride
from .source import Source, Span

COMMAND_LINE = "<command line>"


@dataclass(frozen=True)
class Sweep:
    """`-m stage.sft.lr=1e-4,3e-4`: one key, several values, each a separate build."""

    key: str
    values: tuple[str, ...]


def split_sweeps(args: list[str]) -> tuple[list[list[str]], list[Diagnostic]]:
    """Expand sweep overrides into the cartesian product of plain override lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    combos: list[list[str]] = [[]]
    diags: list[Diagnostic] = []
    for arg in args:
        try:
            o = parser.parse_override(arg)
        except OverrideParseException as exc:
            diags.append(_bad(arg, args, str(exc).splitlines()[0]))
            continue
        if o.is_sweep_override():
            values = [str(v) for v in o.sweep_string_iterator()]
            combos = [c + [f"{o.get_key_element()}={v}"] for c in combos for v in values]
        else:
            combos = [c + [arg] for c in combos]
    return combos, diags


def _bad(arg: str, args: list[str], why: str) -> Diagnostic:
    text = " ".join(args)
    start = text.find(arg)
    src = Source(COMMAND_LINE, text)
    return error("bad-override", f"cannot read the override `{arg}`", src.span(start, start + len(arg)),
                 why, help="overrides look like `stage.sft.lr=1e-4` or `var.rank=32`")


def parse_overrides(args: list[str] | tuple[str, ...]) -> tuple[tuple[CliOverride, ...], list[Diagnostic]]:
    if not args:
        return (), []
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    text = " ".join(args)
    source = Source(COMMAND_LINE, text)
    parser = OverridesParser.create()
    out: list[CliOverride] = []
    diags: list[Diagnostic] = []
    seen: dict[str, Span] = {}  # each key once: which of two values wins is not obvious
    offset = 0
    for arg in args:
        start = text.index(arg, offset)
        offset = start + len(arg)
        span = source.span(start, offset)
        try:
            o = parser.parse_override(arg)
        except OverrideParseException as exc:
            diags.append(error("bad-override", f"cannot read the override `{arg}`", span,
                               str(exc).splitlines()[0].strip() or "not an override",
                               help="overrides look like `stage.sft.lr=1e-4` or `var.rank=32`"))
            continue
        if o.is_sweep_override():
            diags.append(error("bad-override", "a sweep needs `-m`", span, "several values",
                               help="run `formula build -m ...` to build each value"))
            continue
        key = o.get_key_element().lstrip("+~")
        key_start = start + arg.index(key)
        parts = []
        pos = key_start
        for part in key.split("."):
            parts.append(ast.Ident(part, source.span(pos, pos + len(part))))
            pos += len(part) + 1
        if not all(p.name.isidentifier() for p in parts) or len(parts) < 2:
            diags.append(error("bad-override", f"`{key}` is not a field path", span,
                               "expected `kind.block.field` or `var.name`"))
            continue
        canonical = ".".join(["var" if parts[0].name == "param" else parts[0].name]
                             + [p.name for p in parts[1:]])
        if canonical in seen:
            diags.append(error("duplicate-override", f"`{canonical}` is set twice on the command line",
                               span, "set again", labels=[Label(seen[canonical], "first set here")],
                               help="keep one of them"))
            continue
        seen[canonical] = span
        if o.type is OverrideType.DEL:
            out.append(CliOverride(tuple(parts), None, span))
            continue
        raw = arg.split("=", 1)[1]
        value_start = start + len(arg) - len(raw)
        if not raw.strip():
            diags.append(error("bad-override", f"`{key}` has no value", source.span(value_start - 1, value_start),
                               "nothing after `=`",
                               help=f"write a value (`{key}=...`); `~{key}` drops the field back to "
                                    f"its default, and `{key}=''` sets an empty string"))
            continue
        value = _value(source, raw, value_start, o, diags)
        if value is not None:
            out.append(CliOverride(tuple(parts), value, span, raw))
    return tuple(out), diags


def _value(source: Source, raw: str, start: int, override, diags) -> ast.Expr | None:
    span = source.span(start, start + len(raw))
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return ast.String(raw[1:-1], raw, span)
    # Parse the value in a source of its own, padded so that positions match the command line.
    padded = Source(COMMAND_LINE, " " * start + raw)
    expr, errs = parse_expression(padded)
    if expr is not None:
        return _rebase(expr, source)
    value = override.value()
    if isinstance(value, str):
        return ast.String(value, raw, span)
    diags.extend(errs)
    return None


def _rebase(node, source: Source):
    """Point every span of a parsed value at the command-line source."""
    if isinstance(node, tuple):
        return tuple(_rebase(n, source) for n in node)
    if not hasattr(node, "__dataclass_fields__"):
        return node
    changes = {}
    for name in node.__dataclass_fields__:
        value = getattr(node, name)
        if name == "span":
            changes[name] = source.span(value.start, value.end)
        elif hasattr(value, "__dataclass_fields__") or isinstance(value, tuple):
            changes[name] = _rebase(value, source)
    return type(node)(**{**{n: getattr(node, n) for n in node.__dataclass_fields__}, **changes})

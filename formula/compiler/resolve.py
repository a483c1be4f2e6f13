"""Files → one program: imports and `extends` loaded, overrides applied, names in scope.

Pure apart from reading files through the `read` function it is given, so tests can feed it
texts from memory. Nothing is evaluated here; `check.py` does that.
"""

from __future__ import annotations

import os
from functools import lru_cache
from dataclasses import dataclass, field, replace
from typing import Callable

from . import ast, resources
from .diagnostics import Diagnostic, Label, did_you_mean, error
from .parse import PARSE_CODES, parse, undecodable
from .schema import SCHEMAS
from .source import Source, Span, decode
from formula.contract.types import Str

# A file's bytes (or text), or None when there is no such file; other OSErrors are reported.
Reader = Callable[[str], "bytes | str | None"]
# `extends` and `use` chains deeper than this are refused (each level is a recursive call).
MAX_IMPORT_DEPTH = 64


@dataclass(eq=False)
class BlockDef:
    kind: ast.Ident
    name: ast.Ident
    members: tuple[ast.Member, ...]
    scope: Scope
    span: Span

    @property
    def qualified(self) -> str:
        return self.scope.qualify(self.name.name)


@dataclass(eq=False)
class VarDef:
    decl: ast.VarDecl
    value: ast.Expr | None
    value_scope: Scope | None  # where `value` is evaluated (an importer's args live there)
    set_at: Span | None = None  # where a value other than the default was given


@dataclass(eq=False)
class Scope:
    """One formula after its `extends` chain is merged; imported once per `use`."""

    path: str
    prefix: str  # "" for the root; "gt" for `use ... as gt`
    module: ast.Module
    header: ast.Block | None = None
    vars: dict[str, VarDef] = field(default_factory=dict)
    blocks: dict[str, BlockDef] = field(default_factory=dict)
    uses: dict[str, Scope] = field(default_factory=dict)
    use_nodes: dict[str, ast.Use] = field(default_factory=dict)

    def qualify(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


@dataclass(frozen=True)
class CliOverride:
    """One `key=value` from the command line, already parsed (see `overrides.py`)."""

    target: tuple[ast.Ident, ...]
    value: ast.Expr | None  # None deletes the field (`~key`)
    span: Span
    raw_value: str = ""


@dataclass(frozen=True)
class Program:
    root: Scope
    scopes: tuple[Scope, ...]
    cli_overrides: bool = False  # a var left unused by a command-line override is not the file's fault


def read_file(path: str) -> bytes | None:
    """A formula file's bytes (decoded by the resolver, which reports text that is not UTF-8)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
        return None  # ValueError: a path with a NUL in it names no file


class _Resolver:
    def __init__(self, read: Reader):
        self.read = read
        self.diagnostics: list[Diagnostic] = []
        self.parsed: dict[str, ast.Module | None] = {}
        self.broken: set[str] = set()  # files with syntax errors: what is left of them is partial
        self.scopes: list[Scope] = []

    # loading ------------------------------------------------------------------------------------

    def module(self, path: str, at: Span | None, what: str) -> ast.Module | None:
        if path in self.parsed:
            return self.parsed[path]
        try:
            data = self.read(path)
        except OSError as exc:
            self.parsed[path] = None
            self.diagnostics.append(error(
                "file-not-found" if at is None else "import-not-found",
                f"cannot read `{path}`: {exc.strerror or exc}", at,
                f"looked for {path}" if at is not None else "", help="check the file's permissions"))
            return None
        if data is None:
            self.parsed[path] = None
            if at is None:
                self.diagnostics.append(error("file-not-found", f"cannot read `{path}`", None,
                                              help="check the path"))
            else:
                self.diagnostics.append(error(
                    "import-not-found", f"cannot find {what} `{at.text.strip(chr(34))}`", at,
                    f"looked for {path}", help="paths are relative to the formula that names them"))
            return None
        text, bad = decode(data)
        if bad is not None:
            self.diagnostics.append(undecodable(path, text, bad))
            self.parsed[path] = ast.Module(Source(path, text), (), (), Source(path, text).span(0, 0))
            self.broken.add(path)
            return self.parsed[path]
        module, diags = _parse_cached(path, text)
        self.diagnostics.extend(diags)
        if any(d.code in PARSE_CODES for d in diags):
            self.broken.add(path)
        self.parsed[path] = module
        return module

    def scope(self, path: str, prefix: str, stack: tuple[tuple[str, Span | None], ...],
              at: Span | None = None, what: str = "formula") -> Scope | None:
        for i, (p, _) in enumerate(stack):
            if p == path:
                chain = [os.path.basename(q) for q, _ in stack[i:]] + [os.path.basename(path)]
                self.diagnostics.append(error(
                    "import-cycle", f"{what}s form a cycle: {' → '.join(chain)}", at,
                    "this closes the cycle",
                    help="a formula cannot extend itself or a formula that extends it"
                    if what == "parent formula" else
                    "move what both files need into a third formula that both import"))
                return None
        if len(stack) >= MAX_IMPORT_DEPTH:
            self.diagnostics.append(error(
                "import-depth", f"formulas extend and import each other more than "
                f"{MAX_IMPORT_DEPTH} deep", at, "one level too many",
                help="flatten the chain: a formula may import several others"))
            return None
        module = self.module(path, at, what)
        if module is None:
            return None
        stack = stack + ((path, at),)
        scope = Scope(path, prefix, module)
        extends = [i for i in module.items if isinstance(i, ast.Extends)]
        for extra in extends[1:]:
            self.diagnostics.append(error("duplicate-extends", "a formula extends one parent",
                                          extra.span, "second `extends`",
                                          labels=[Label(extends[0].span, "first here")],
                                          help="import other formulas with `use`"))
        if extends:
            parent_path = _relative(path, extends[0].path.value)
            parent = self.scope(parent_path, prefix, stack, extends[0].path.span, "parent formula")
            if parent is not None:
                scope.header = parent.header
                scope.vars = dict(parent.vars)
                scope.blocks = {k: replace(b, scope=scope) for k, b in parent.blocks.items()}
                scope.uses = dict(parent.uses)
                scope.use_nodes = dict(parent.use_nodes)
                for var in [*scope.vars.values(),
                            *(v for used in scope.uses.values() for v in used.vars.values())]:
                    if var.value_scope is parent:
                        var.value_scope = scope
                self.scopes.remove(parent)
        self.merge_items(scope, module, stack, inherited=bool(extends))
        self.scopes.append(scope)
        return scope

    def merge_items(self, scope: Scope, module: ast.Module, stack, inherited: bool) -> None:
        headers = [i for i in module.items if isinstance(i, ast.Block) and i.kind.name == "formula"]
        if headers:
            scope.header = headers[0]
            for extra in headers[1:]:
                self.diagnostics.append(error(
                    "duplicate-header", "a formula has one header", extra.name.span,
                    "second `formula` block", labels=[Label(headers[0].name.span, "first header here")],
                    help="merge the two headers into one"))
        elif not inherited and module.source.path not in self.broken:
            self.diagnostics.append(error(
                "missing-header", "this file has no `formula` header", _first_line(module),
                "expected `formula NAME { ... }`",
                help="start the file with `formula my_model { description = \"...\" }`"))
        own_vars: dict[str, ast.VarDecl] = {}
        for item in module.items:
            if isinstance(item, ast.VarDecl):
                name = item.name.name
                if name in own_vars:
                    self.diagnostics.append(error(
                        "duplicate-name", f"var `{name}` is declared twice", item.name.span,
                        "declared again", labels=[Label(own_vars[name].name.span, "first here")]))
                    continue
                if name in scope.vars:
                    self.diagnostics.append(error(
                        "duplicate-name", f"var `{name}` is already declared by the parent formula",
                        item.name.span, "declared again", labels=[Label(scope.vars[name].decl.name.span,
                                                                        "declared here")],
                        help=f"to change its value, write `var.{name} = ...`"))
                    continue
                own_vars[name] = item
                scope.vars[name] = VarDef(item, item.default, scope)
            elif isinstance(item, ast.Block) and item.kind.name != "formula":
                name = item.name.name
                if name in scope.blocks:
                    prev = scope.blocks[name]
                    from_parent = prev.span.source is not module.source
                    self.diagnostics.append(error(
                        "duplicate-name",
                        f"`{name}` is already defined" + (" by the parent formula" if from_parent else ""),
                        item.name.span, "defined again",
                        labels=[Label(prev.name.span, "first defined here")],
                        help=(f"to change one field of it, write `{prev.kind.name}.{name}.FIELD = ...`"
                              if from_parent else "give each block its own name")))
                    continue
                scope.blocks[name] = BlockDef(item.kind, item.name, item.body, scope, item.span)
            elif isinstance(item, ast.Use):
                alias = item.alias.name
                if alias in scope.uses:
                    self.diagnostics.append(error(
                        "duplicate-name", f"the name `{alias}` is already used for an import",
                        item.alias.span, "used again",
                        labels=[Label(scope.use_nodes[alias].alias.span, "first here")]))
                    continue
                imported = self.scope(_relative(scope.path, item.path.value),
                                      scope.qualify(alias), stack, item.path.span, "import")
                if imported is None:
                    continue
                scope.uses[alias] = imported
                scope.use_nodes[alias] = item
                for member in item.args:
                    self.bind_use_arg(imported, scope, member, item)
        for name, block in scope.blocks.items():
            if name in scope.uses:
                self.diagnostics.append(error(
                    "ambiguous-name", f"`{name}` names both a block and an import", block.name.span,
                    "block", labels=[Label(scope.use_nodes[name].alias.span, "import")],
                    help="rename one of them"))
        for item in module.items:
            if isinstance(item, ast.Override):
                self.apply(scope, item.target, item.value, item.span, from_cli=False)

    def bind_use_arg(self, imported: Scope, importer: Scope, member: ast.Member, use: ast.Use) -> None:
        if not isinstance(member, ast.Field):
            self.diagnostics.append(error("syntax", "an import takes `name = value` arguments",
                                          member.span, "not an argument"))
            return
        name = member.name.name
        var = imported.vars.get(name)
        if var is None:
            self.diagnostics.append(error(
                "unknown-var", f"`{use.path.value}` declares no var `{name}`", member.name.span,
                "unknown var", help=did_you_mean(name, imported.vars) or
                f"its vars are: {', '.join(sorted(imported.vars)) or 'none'}"))
            return
        imported.vars[name] = VarDef(var.decl, member.value, importer, member.span)

    # overrides ----------------------------------------------------------------------------------

    def apply(self, scope: Scope, target: tuple[ast.Ident, ...], value: ast.Expr | None,
              span: Span, from_cli: bool) -> None:
        head = target[0].name
        where = "on the command line" if from_cli else ""
        # `corpus.gt.sessions.holdout`, `var.gt.max_len`: one step per import reaches into it.
        # A var's new value is evaluated where the override is written, as in `use` arguments.
        value_scope = scope
        is_var = head in ("var", "param")
        while (len(target) >= (3 if is_var else 4) and target[1].name in scope.uses
               and (is_var or target[1].name not in scope.blocks)):
            scope = scope.uses[target[1].name]
            target = (target[0],) + target[2:]
        if is_var:
            if len(target) != 2:
                self.diagnostics.append(error(
                    "bad-override", "a var override names one var", span, "expected `var.NAME`"))
                return
            name = target[1].name
            var = scope.vars.get(name)
            if var is None:
                self.diagnostics.append(error(
                    "unknown-var", f"no var `{name}` to set {where}".strip(), target[1].span,
                    "unknown var", help=did_you_mean(name, scope.vars) or
                    f"declared vars: {', '.join(sorted(scope.vars)) or 'none'}"))
                return
            if value is None:
                scope.vars[name] = VarDef(var.decl, var.decl.default, scope, span)
                return
            if from_cli:
                value = _coerce_cli(value, var.decl.type.name == "str")
            scope.vars[name] = VarDef(var.decl, value, value_scope, span)
            return
        if head not in SCHEMAS or head == "formula":
            kinds = [k for k in SCHEMAS if k != "formula"] + ["var"]
            hint = did_you_mean(head, kinds)
            self.diagnostics.append(error(
                "bad-override", f"cannot override `{'.'.join(t.name for t in target)}`",
                target[0].span, f"`{head}` is not a block kind",
                help=(hint + " " if hint else "") + "overrides look like `stage.sft.lr = 1e-4` or "
                "`var.rank = 32`"))
            return
        if len(target) < 3:
            self.diagnostics.append(error(
                "bad-override", "an override names a kind, a block and a field", span,
                f"expected `{head}.NAME.FIELD`"))
            return
        name = target[1].name
        block = scope.blocks.get(name)
        if block is None or block.kind.name != head:
            same_kind = [n for n, b in scope.blocks.items() if b.kind.name == head]
            if block is not None:
                msg, hint = (f"`{name}` is a {block.kind.name}, not a {head}",
                             f"write `{block.kind.name}.{name}.{target[2].name}`")
            elif name in scope.uses:
                msg, hint = (f"`{name}` is an import", f"name one of its blocks: "
                             f"`{head}.{name}.NAME.FIELD`")
            else:
                msg, hint = f"there is no {head} `{name}` to override", did_you_mean(name, same_kind)
            self.diagnostics.append(error("bad-override", msg, target[1].span, "no such block",
                                          help=hint))
            return
        fspec = SCHEMAS[head].field(target[2].name)
        if from_cli and value is not None and fspec is not None and len(target) == 3:
            value = _coerce_cli(value, isinstance(fspec.type, Str))
        openable = frozenset(SCHEMAS[head].sub_blocks + (("resources",) if head in resources.KINDS else ()))
        members = _set_member(block.members, target[2:], value, span, openable)
        if isinstance(members, str):
            self.diagnostics.append(error("bad-override", members, span, "cannot set this"))
            return
        block.members = members


def _set_member(members: tuple[ast.Member, ...], path: tuple[ast.Ident, ...],
                value: ast.Expr | None, span: Span,
                openable: frozenset[str] = frozenset()) -> tuple[ast.Member, ...] | str:
    """Replace (or add, or delete) the field at `path`; deeper paths go into calls' kwargs or
    sub-blocks. A sub-block the block may hold (`openable`: `stage.sft.resources.gpus = 1` on a
    stage a library defines) is added when it is not there."""
    name = path[0].name
    out = list(members)
    for i, m in enumerate(out):
        if isinstance(m, ast.Field) and m.name.name == name:
            if len(path) == 1:
                if value is None:
                    del out[i]
                else:
                    out[i] = ast.Field(m.name, value, span)
                return tuple(out)
            if isinstance(m.value, ast.Call):
                call = _set_kwarg(m.value, path[1:], value, span)
                if isinstance(call, str):
                    return call
                out[i] = ast.Field(m.name, call, m.span)
                return tuple(out)
            return f"`{name}` is not a call with arguments"
        if isinstance(m, ast.SubBlock) and m.name.name == name and len(path) > 1:
            inner = _set_member(m.body, path[1:], value, span)
            if isinstance(inner, str):
                return inner
            out[i] = ast.SubBlock(m.name, inner, m.span)
            return tuple(out)
    if len(path) > 1 and name in openable and value is not None:
        inner = _set_member((), path[1:], value, span)
        if isinstance(inner, str):
            return inner
        return (*out, ast.SubBlock(path[0], inner, span))
    if len(path) > 1:
        return f"`{name}` is not set in this block, so `{path[1].name}` inside it cannot be"
    if value is not None:
        out.append(ast.Field(ast.Ident(name, path[0].span), value, span))
    return tuple(out)


def _set_kwarg(call: ast.Call, path: tuple[ast.Ident, ...], value: ast.Expr | None,
               span: Span) -> ast.Call | str:
    if len(path) != 1:
        return "overrides reach one level into a call's arguments"
    kwargs = [k for k in call.kwargs if k.name.name != path[0].name]
    if value is not None:
        kwargs.append(ast.KwArg(path[0], value, span))
    return ast.Call(call.func, call.args, tuple(kwargs), call.span)


def _coerce_cli(value: ast.Expr, want_str: bool) -> ast.Expr:
    """On the command line `role=mayor` means the string "mayor" where a string is expected."""
    if want_str and isinstance(value, ast.Name):
        return ast.String(value.name, value.name, value.span)
    return value


@lru_cache(maxsize=512)
def _parse_cached(path: str, text: str) -> tuple[ast.Module, tuple[Diagnostic, ...]]:
    """A library imported by many formulas is parsed once per process (ASTs are immutable)."""
    module, diags = parse(Source(path, text))
    return module, tuple(diags)


def _relative(from_file: str, path: str) -> str:
    return os.path.normpath(os.path.join(os.path.dirname(from_file), os.path.expanduser(path)))


def _first_line(module: ast.Module) -> Span:
    text = module.source.text
    end = text.find("\n")
    return module.source.span(0, end if end >= 0 else len(text))


def resolve(path: str, overrides: tuple[CliOverride, ...] = (),
            read: Reader = read_file) -> tuple[Program | None, list[Diagnostic]]:
    r = _Resolver(read)
    root = r.scope(os.path.normpath(path), "", ())
    if root is None:
        return None, r.diagnostics
    for o in overrides:
        r.apply(root, o.target, o.value, o.span, from_cli=True)
    return Program(root, tuple(r.scopes), bool(overrides)), r.diagnostics

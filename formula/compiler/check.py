"""Resolved program → typed plan: every field checked, every reference bound, cross-block rules.

Block-local checks (unknown and missing fields, types, ranges) run for every block of every
file; whole-formula rules (cycles, unused vars, holdouts that exist) run on the blocks the root
formula reaches, and each reached block's kind builds its plan record with the rules of its
domain (DPO data, quant shapes, evals on outputs that are built): `kinds/<kind>.py`.
"""

from __future__ import annotations

import os

from formula.contract import types as T

from . import ast, plan, resources
from .diagnostics import Diagnostic, Label, did_you_mean, error, near_names, one_of, warning
from .evaluate import INVALID, BlockRef, Evaluator, _kind_article
from .kinds import BUILDERS
from .kinds.common import Checked
from .resolve import BlockDef, Program, Scope
from .schema import SCHEMAS, VAR_TYPES, BlockSchema


class _Checker:
    def __init__(self, program: Program, diagnostics: list[Diagnostic]):
        self.program = program
        self.diags = diagnostics
        self.ev = Evaluator(program, diagnostics)
        self.checked: dict[int, Checked] = {}

    def err(self, *args, **kw) -> None:
        self.diags.append(error(*args, **kw))

    # --- per block --------------------------------------------------------------------------

    def header_values(self, scope: Scope) -> dict[str, object]:
        if scope.header is None:
            return {}
        fake = BlockDef(scope.header.kind, scope.header.name, scope.header.body, scope,
                        scope.header.span)
        return self.fields(fake, SCHEMAS["formula"]).values

    def fields(self, block: BlockDef, schema: BlockSchema) -> Checked:
        key = id(block)
        if key in self.checked:
            return self.checked[key]
        values: dict[str, object] = {}
        nodes: dict[str, ast.Field] = {}
        gates: list[tuple[tuple, ast.Check]] = []
        self.ev.current_block = block
        what = f"{block.kind.name} `{block.name.name}`"
        for member in block.members:
            if isinstance(member, ast.Field):
                name = member.name.name
                spec = schema.field(name)
                if spec is None:
                    self._unknown_field(member, schema, what)
                    continue
                if name in nodes:
                    self.err("duplicate-field", f"`{name}` is set twice in {what}", member.name.span,
                             "set again", labels=[Label(nodes[name].name.span, "first set here")],
                             help="remove one of them")
                    continue
                nodes[name] = member
                values[name] = self.ev.eval(member.value, spec.type, block.scope)
            elif isinstance(member, ast.Check):
                if not schema.checks:
                    self.err("misplaced-check", f"`check` belongs in an eval block, not in {what}",
                             member.span, "not allowed here",
                             help="move it into an `eval NAME { on = ... }` block")
                    continue
                gate = self.ev.gate(member.expr, block.scope)
                if isinstance(gate, tuple):
                    gates.append((gate, member))
            elif isinstance(member, ast.SubBlock):
                if member.name.name == "resources" and schema.kind in resources.KINDS:
                    if "resources" in values:
                        self.err("duplicate-field", f"`resources` is set twice in {what}",
                                 member.name.span, "set again", help="merge them into one")
                    values["resources"] = resources.check(self, member, block, what)
                    continue
                if member.name.name not in schema.sub_blocks:
                    self.err("misplaced-block", f"`{member.name.name} {{ ... }}` cannot appear "
                             f"inside {what}", member.name.span, "unexpected block",
                             help=f"blocks do not nest; to set a field, write `{member.name.name} = ...`"
                             if schema.field(member.name.name) else
                             "`resources` belong in a stage block (what its train step asks of a cluster)"
                             if member.name.name == "resources" else "define blocks at top level")
                    continue
                for inner in member.body:
                    if isinstance(inner, ast.Field):
                        self.ev.eval(inner.value, T.Any_(), block.scope)
                    else:
                        self.err("misplaced-block", "free metadata holds fields only", inner.span,
                                 "not a field")
        self.ev.current_block = None
        missing = [f for f in schema.fields if f.required and f.name not in nodes]
        # a misspelt required field is one mistake: its unknown-field error says "did you mean"
        misspelt = {n for m in block.members if isinstance(m, ast.Field) and schema.field(m.name.name) is None
                    for n in near_names(m.name.name, [f.name for f in missing])}
        for f in missing:
            if f.name in misspelt:
                continue
            self.err("missing-field", f"{what} has no `{f.name}`", block.name.span,
                     f"`{f.name}` is required",
                     help=f"add `{f.name} = ...`" + (f" ({f.doc})" if f.doc else "") +
                     (f"; one of {one_of(f.type.choices)}" if isinstance(f.type, T.Symbol) else ""))
        for f in schema.fields:
            if f.name not in nodes and f.name not in values:
                values[f.name] = None if f.required else f.default
        if any(f.required for f in missing):
            for f in missing:
                values[f.name] = INVALID
        result = Checked(block, values, nodes, gates)
        self.checked[key] = result
        return result

    def _unknown_field(self, member: ast.Field, schema: BlockSchema, what: str) -> None:
        name = member.name.name
        hint = did_you_mean(name, schema.field_names)
        elsewhere = [k for k, s in SCHEMAS.items() if s.field(name) is not None and k != schema.kind]
        if not hint and elsewhere:
            hint = f"`{name}` is a field of {' and '.join(_kind_article(k) for k in elsewhere[:2])} block"
        if not hint:
            hint = f"{what.split(' ')[0]} fields: {one_of(schema.field_names)}"
        self.err("unknown-field", f"unknown field `{name}` in {what}", member.name.span,
                 "unknown field", help=hint)

    # --- the whole formula ----------------------------------------------------------------------

    def run(self) -> plan.Plan | None:
        root = self.program.root
        abstract = bool(self.header_values(root).get("abstract"))
        self.ev.lenient_vars = abstract
        for scope in self.program.scopes:
            if scope is not root:
                self.header_values(scope)
            for name, var in scope.vars.items():
                if var.decl.type.name not in VAR_TYPES:
                    self.err("unknown-type", f"unknown type `{var.decl.type.name}`",
                             var.decl.type.span, "not a type",
                             help=did_you_mean(var.decl.type.name, VAR_TYPES) or
                             f"types: {one_of(VAR_TYPES)}")
            for name in scope.vars:
                self.ev.var_value(scope, name, None)
        for scope in self.program.scopes:
            for block in scope.blocks.values():
                schema = SCHEMAS.get(block.kind.name)
                if schema is None:
                    self.err("unknown-block", f"unknown block kind `{block.kind.name}`",
                             block.kind.span, "not a block kind",
                             help=did_you_mean(block.kind.name, SCHEMAS) or
                             f"block kinds: {one_of(k for k in SCHEMAS if k != 'formula')}")
                    continue
                self.fields(block, schema)
        for view, block, at in self.ev.holdout_uses:
            self.holdout_exists(view, block, at)
        reachable = self._reachable(root)
        self._cycles(reachable)
        built = plan.Plan(
            name=root.header.name.name if root.header else os.path.basename(root.path),
            description=str(self.header_values(root).get("description") or ""),
            file=root.path,
            vars=tuple(plan.VarValue(n, v.decl.type.name,
                                     self.ev.var_values.get((id(root), n)),
                                     v.decl.doc.value if v.decl.doc else "")
                       for n, v in root.vars.items()),
        )
        for block in reachable:
            if block.kind.name not in BUILDERS or id(block) not in self.checked:
                continue
            build, table = BUILDERS[block.kind.name]
            result = build(self, self.checked[id(block)])
            if result is not None:
                getattr(built, table)[block.qualified] = result
        if not self.program.cli_overrides:
            self._unused_vars()
        if any(d.is_error for d in self.diags):
            return None
        return built

    def _reachable(self, root: Scope) -> list[BlockDef]:
        edges: dict[int, list[BlockDef]] = {}
        for src, dst, _ in self.ev.refs:
            if src is not None:
                edges.setdefault(id(src), []).append(dst)
        seen: dict[int, BlockDef] = {}
        stack = list(root.blocks.values())
        while stack:
            b = stack.pop()
            if id(b) in seen:
                continue
            seen[id(b)] = b
            stack.extend(edges.get(id(b), ()))
        order = {id(b): i for i, b in enumerate(b for s in self.program.scopes for b in s.blocks.values())}
        return sorted(seen.values(), key=lambda b: order.get(id(b), 0))

    def _cycles(self, blocks: list[BlockDef]) -> None:
        edges: dict[int, list[tuple[BlockDef, object]]] = {}
        for src, dst, span in self.ev.refs:
            if src is not None:
                edges.setdefault(id(src), []).append((dst, span))
        state: dict[int, int] = {}
        path: list[tuple[BlockDef, object]] = []
        reported: set[frozenset] = set()

        def visit(root: BlockDef) -> None:
            # Depth first with a stack of its own: a chain of 1,000 stages is 1,000 levels deep.
            state[id(root)] = 1
            todo = [(root, iter(edges.get(id(root), ())))]
            while todo:
                b, pending = todo[-1]
                for dst, span in pending:
                    if state.get(id(dst)) == 1:
                        start = next(i for i, (p, _) in enumerate(path + [(b, span)]) if p is dst) \
                            if any(p is dst for p, _ in path) else len(path)
                        cycle = [p for p, _ in path[start:]] + [b]
                        key = frozenset(id(c) for c in cycle)
                        if key not in reported:
                            reported.add(key)
                            names = " → ".join(f"`{c.name.name}`" for c in cycle + [dst])
                            self.err("cycle", f"{cycle[0].kind.name}s depend on each other: {names}",
                                     span, "this reference closes the cycle",
                                     help="a stage starts from a base model or an earlier stage; "
                                          "break the cycle")
                    elif state.get(id(dst)) is None:
                        path.append((b, span))
                        state[id(dst)] = 1
                        todo.append((dst, iter(edges.get(id(dst), ()))))
                        break
                else:
                    state[id(b)] = 2
                    todo.pop()
                    if todo:
                        path.pop()

        for b in blocks:
            if state.get(id(b)) is None:
                visit(b)

    def _unused_vars(self) -> None:
        for scope in self.program.scopes:
            for name, var in scope.vars.items():
                if (id(scope), name) not in self.ev.used_vars:
                    self.diags.append(warning(
                        "unused-var", f"var `{name}` is never used", var.decl.name.span,
                        "declared here", help="use it in a field, or remove it"))

    # --- what the kinds' builders use ---------------------------------------------------------

    def origin(self, block: BlockDef) -> plan.Origin:
        return plan.Origin(block.span.source.path, block.span.line, block.span.column)

    def path(self, block: BlockDef, path: str) -> str:
        path = os.path.expanduser(path)
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(block.scope.path)), path))

    def holdout_exists(self, view: plan.DataView, block: BlockDef, at: ast.Expr) -> bool:
        if view.kind != "corpus" or view.split != "holdout":
            return True
        checked = self.checked.get(id(block))
        if checked is not None and checked.values.get("holdout") == 0.0:
            node = checked.nodes.get("holdout")
            self.err("no-holdout", f"corpus `{block.name.name}` holds nothing out", at.span,
                     "this split is empty",
                     labels=[Label(node.span, "holdout is 0% here")] if node else [],
                     help=f"set `holdout = 5%` in corpus `{block.name.name}`")
            return False
        return True

    def root_model(self, block: BlockDef | None) -> BlockDef | None:
        """The model at the root of a stage, assemble or export chain. The plan records carry
        the answer (`base_model`), so nothing after the checker walks a chain again. Each
        block's answer is kept: 1,000 chained stages are walked once, not 1,000 times."""
        roots = self.__dict__.setdefault("_roots", {})
        path, seen, found = [], set(), None
        while block is not None and id(block) not in seen:
            if id(block) in roots:
                found = roots[id(block)]
                break
            path.append(block)
            seen.add(id(block))
            if block.kind.name == "model":
                found = block
                break
            checked = self.checked.get(id(block))
            if checked is None:
                break
            nxt = checked.values.get({"export": "from", "assemble": "from", "stage": "model"}
                                     .get(block.kind.name, ""))
            block = nxt.block if isinstance(nxt, BlockRef) else None
        for b in path:
            roots[id(b)] = found
        return found


def check(program: Program) -> tuple[plan.Plan | None, list[Diagnostic]]:
    diagnostics: list[Diagnostic] = []
    result = _Checker(program, diagnostics).run()
    return result, diagnostics

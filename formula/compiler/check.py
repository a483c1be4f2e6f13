"""Resolved program → typed plan: every field checked, every reference bound, cross-block rules.

Block-local checks (unknown and missing fields, types, ranges) run for every block of every
file; whole-formula rules (cycles, DPO data, quant shapes, evals on outputs that are built) run
on the blocks the root formula reaches.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from . import ast, plan, types as T
from .diagnostics import Diagnostic, Label, did_you_mean, error, near_names, one_of, warning
from .format import expr_text
from .evaluate import INVALID, BlockRef, Evaluator, FuncValue, _kind_article
from .resolve import BlockDef, Program, Scope
from . import chat_template
from .chat_template import shown
from .source import Source
from formula.contract.outcome_rules import RulesError, parse_rules
from .schema import CLAUDE_CODE_READING, QUANT_TYPES, SCHEMAS, VAR_TYPES, BlockSchema


@dataclass
class _Checked:
    block: BlockDef
    values: dict[str, object]
    nodes: dict[str, ast.Field]
    gates: list[tuple[tuple, ast.Check]]


def _arg_span(call, name: str):
    """The span of `name = value` inside a call, for diagnostics about one argument."""
    text = call.source.text[call.start:call.end]
    found = re.search(rf'\b{name}\s*=\s*("[^"\n]*"|[\w.]+)', text)
    return call.source.span(call.start + found.start(), call.start + found.end()) if found else None


class _Checker:
    def __init__(self, program: Program, diagnostics: list[Diagnostic]):
        self.program = program
        self.diags = diagnostics
        self.ev = Evaluator(program, diagnostics)
        self.checked: dict[int, _Checked] = {}

    def err(self, *args, **kw) -> None:
        self.diags.append(error(*args, **kw))

    # --- per block --------------------------------------------------------------------------

    def header_values(self, scope: Scope) -> dict[str, object]:
        if scope.header is None:
            return {}
        fake = BlockDef(scope.header.kind, scope.header.name, scope.header.body, scope,
                        scope.header.span)
        return self.fields(fake, SCHEMAS["formula"]).values

    def fields(self, block: BlockDef, schema: BlockSchema) -> _Checked:
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
                if gate is not INVALID:
                    gates.append((gate, member))
            elif isinstance(member, ast.SubBlock):
                if member.name.name not in schema.sub_blocks:
                    self.err("misplaced-block", f"`{member.name.name} {{ ... }}` cannot appear "
                             f"inside {what}", member.name.span, "unexpected block",
                             help=f"blocks do not nest; to set a field, write `{member.name.name} = ...`"
                             if schema.field(member.name.name) else "define blocks at top level")
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
        result = _Checked(block, values, nodes, gates)
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
            self._holdout_exists(view, block, at)
        reachable = self._reachable(root)
        self._cycles(reachable)
        built = plan.Plan(
            name=root.header.name.name if root.header else os.path.basename(root.path),
            description=self.header_values(root).get("description") or "",
            file=root.path,
            vars=tuple(plan.VarValue(n, v.decl.type.name,
                                     self.ev.var_values.get((id(root), n)),
                                     v.decl.doc.value if v.decl.doc else "")
                       for n, v in root.vars.items()),
        )
        builders = {"model": (self._model, built.models), "corpus": (self._corpus, built.corpora),
                    "pairs": (self._pairs, built.pairs), "stage": (self._stage, built.stages),
                    "assemble": (self._assemble, built.assembles),
                    "export": (self._export, built.exports), "eval": (self._eval, built.evals)}
        for block in reachable:
            if block.kind.name not in builders or id(block) not in self.checked:
                continue
            build, table = builders[block.kind.name]
            result = build(self.checked[id(block)])
            if result is not None:
                table[block.qualified] = result
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

    # --- builders: checked fields → plan records ------------------------------------------------

    def _origin(self, block: BlockDef) -> plan.Origin:
        return plan.Origin(block.span.source.path, block.span.line, block.span.column)

    def _path(self, block: BlockDef, path: str) -> str:
        path = os.path.expanduser(path)
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(block.scope.path)), path))

    def _model(self, c: _Checked) -> plan.ModelPlan | None:
        v, b = c.values, c.block
        src = v.get("from")
        if not isinstance(src, FuncValue):
            return None
        if src.name == "hub":
            source = plan.HubSource(src.args["id"], src.args["revision"])
        elif src.name == "path":
            source = plan.PathSource(self._path(b, src.args["dir"]))
        else:
            a = src.args
            kv = a["kv_heads"] if a["kv_heads"] is not None else a["heads"]
            span = c.nodes["from"].value.span
            if a["hidden"] % a["heads"]:
                self.err("bad-shape", f"hidden size {a['hidden']} is not divisible by "
                         f"{a['heads']} heads", span, "shapes do not fit",
                         help="choose heads that divide hidden")
                return None
            if a["heads"] % kv:
                self.err("bad-shape", f"{a['heads']} heads cannot be shared by {kv} kv_heads",
                         span, "shapes do not fit", help="kv_heads must divide heads")
                return None
            if (a["hidden"] // a["heads"]) % 2:
                self.err("bad-shape", f"head size {a['hidden'] // a['heads']} is odd", span,
                         "rotary embeddings need an even head size",
                         help="choose hidden and heads so that hidden / heads is even")
                return None
            source = plan.InitSource(a["arch"], a["hidden"], a["layers"], a["heads"], kv,
                                     a["ffn"], a["context"], a["seed"])
        tok = v.get("tokenizer")
        if tok == "own":
            if isinstance(source, plan.InitSource):
                self.err("init-needs-tokenizer", f"model `{b.name.name}` is made by `init` and has "
                         "no tokenizer of its own", b.name.span, "no tokenizer",
                         help="add `tokenizer = train_bpe(CORPUS, vocab = 512)`")
                return None
            tokenizer = plan.OwnTokenizer()
        elif isinstance(tok, FuncValue):
            if tok.name == "train_bpe":
                tokenizer = plan.TrainedTokenizer(tok.args["corpus"].block.qualified, tok.args["vocab"])
            elif tok.name == "hub":
                tokenizer = plan.HubSource(tok.args["id"], tok.args["revision"])
            else:
                tokenizer = plan.PathSource(self._path(b, tok.args["dir"]))
        else:
            return None
        tmpl = v.get("template")
        if tmpl is None:
            tmpl = "chatml" if isinstance(source, plan.InitSource) else "own"
        if tmpl is INVALID:
            return None
        if tmpl == "own" and isinstance(source, plan.InitSource) and isinstance(tokenizer, plan.TrainedTokenizer):
            self.err("no-template", f"model `{b.name.name}` has no chat template of its own",
                     c.nodes["template"].value.span, "nothing to keep",
                     help="a model made by `init` needs a named template: `template = chatml`")
            return None
        template = (plan.FileTemplate(self._path(b, tmpl.args["path"])) if isinstance(tmpl, FuncValue)
                    else plan.NamedTemplate(tmpl))
        span = c.nodes["template"].value.span if "template" in c.nodes else b.name.span
        if not self._template_fits(b, template, source, tokenizer, span):
            return None
        if INVALID in (v.get("dtype"),):
            return None
        return plan.ModelPlan(b.qualified, source, tokenizer, template, v["dtype"], self._origin(b))

    def _template_fits(self, b: BlockDef, template, source, tokenizer, span) -> bool:
        """Template against tokenizer, where both can be known without building: a named
        template, a template file, and a tokenizer in a local folder or made by `train_bpe`."""
        from formula.runtime.templates import NAMED

        if isinstance(template, plan.FileTemplate):
            try:
                with open(template.path, encoding="utf-8") as fh:
                    text = fh.read()
            except OSError as exc:
                self.err("template-file", f"cannot read the chat template {shown(template.path)}: "
                         f"{exc.strerror or exc}", span, "this file", help="check the path (relative to the formula)")
                return False
            if isinstance(tokenizer, plan.TrainedTokenizer):
                self.err("template-trained-tokenizer", "a tokenizer made by `train_bpe` knows the special "
                         "tokens of a named template only", span, "a template file",
                         help="use `template = chatml` or `template = llama3` with `train_bpe`")
                return False
        elif template.name in NAMED:
            text = NAMED[template.name]
        else:
            text = None
        folder = (tokenizer.dir if isinstance(tokenizer, plan.PathSource) else
                  source.dir if isinstance(tokenizer, plan.OwnTokenizer) and isinstance(source, plan.PathSource)
                  else None)
        tok = chat_template.local_tokenizer(folder) if folder else None
        if text is None:  # `own`: the base model's, readable when the model is local
            text = tok.template if tok else None
            if text is None:
                return True
        ok = True
        for code, message, help_ in chat_template.problems(chat_template.analyse(text), tok, self._masks(b)):
            self.err(code, message, span, "this template", help=help_)
            ok = False
        return ok

    def _masks(self, model: BlockDef) -> bool:
        """Whether a stage that trains from this model keeps the loss on assistant turns only."""
        stages = [c for c in self.checked.values() if c.block.kind.name == "stage"]
        return not stages or any(c.values.get("assistant_only", True) is not False for c in stages)

    def _source(self, b: BlockDef, f: FuncValue) -> plan.TranscriptSource | plan.GastownSource:
        if f.name == "gastown":
            # `town` is matched against the agents' working directories, so it stays as written.
            return plan.GastownSource(self._path(b, f.args["projects"]), self._path(b, f.args["beads"]),
                                      f.args["town"], **self._reading(f))
        meta = f.args["meta"]
        meta_kind, meta_arg = (meta.name, next(iter(meta.args.values()))) if isinstance(meta, FuncValue) \
            else (meta, "")
        if meta_kind == "sidecar":
            meta_arg = self._path(b, meta_arg)
        return plan.TranscriptSource(self._path(b, f.args["glob"]), f.args["format"], meta_kind, meta_arg,
                                     **self._reading(f))

    @staticmethod
    def _reading(f: FuncValue) -> dict:
        return {p.name: f.args[p.name] for p in CLAUDE_CODE_READING}

    def _outcomes(self, b: BlockDef, f: FuncValue, src):
        """A gastown source's outcome rules file: it must exist and parse."""
        if f.name != "gastown" or f.args.get("outcomes") is None:
            return src
        path = self._path(b, f.args["outcomes"])
        at = f.span
        arg = _arg_span(f.span, "outcomes")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror or str(exc) if isinstance(exc, OSError) else "not UTF-8 text"
            self.err("outcome-rules", f"cannot read the outcome rules {shown(path)}: {why}",
                     arg or at, "this file", help="check the path (relative to the formula)")
            return src
        try:
            parse_rules(text, shown(path))
        except RulesError as exc:
            if exc.line:
                rules = Source(shown(path), text)
                line_start = sum(len(x) + 1 for x in text.split("\n")[: exc.line - 1])
                line_text = rules.line_text(exc.line)
                indent = len(line_text) - len(line_text.lstrip())
                span = rules.span(line_start + indent, line_start + max(len(line_text), indent + 1))
                self.err("outcome-rules", f"bad outcome rules: {exc.message}", span, "here",
                         labels=[Label(arg or at, "rules read from here")],
                         help="see docs/data.md, Outcomes")
            else:
                self.err("outcome-rules", f"bad outcome rules in {shown(path)}: {exc.message}",
                         arg or at, "these rules", help="see docs/data.md, Outcomes")
            return src
        return replace(src, outcomes=path)

    def _corpus(self, c: _Checked) -> plan.CorpusPlan | None:
        v, b = c.values, c.block
        if any(x is INVALID for x in v.values()):
            return None
        src = v["source"]
        sources = tuple(self._source(b, f) for f in (src if isinstance(src, tuple) else (src,)))
        sources = tuple(self._outcomes(b, f, s)
                        for f, s in zip(src if isinstance(src, tuple) else (src,), sources))
        for f, s in zip(src if isinstance(src, tuple) else (src,), sources):
            if isinstance(s, plan.TranscriptSource) and s.format == "pairs":
                self.err("wrong-kind", "a corpus reads sessions, not preference pairs", f.span,
                         "`format = pairs`", help="read given pairs in a `pairs` block: "
                         "`pairs NAME { source = transcripts(\"...\", format = pairs) }`")
                return None
        dedup = v["dedup"]
        return plan.CorpusPlan(
            b.qualified, sources, v["where"], tuple(v["scrub"]),
            dedup.name if isinstance(dedup, FuncValue) else dedup,
            dedup.args["threshold"] if isinstance(dedup, FuncValue) else 1.0,
            v["holdout"], v["max_len"], v["truncation"], v["min_turns"], v["max_turns"], v["max_repeats"],
            v["on_error"], v["max_dropped"], self._origin(b))

    def _pairs(self, c: _Checked) -> plan.PairsPlan | None:
        v, b = c.values, c.block
        if any(x is INVALID for x in v.values()):
            return None
        frm, source = v["from"], v["source"]
        if (frm is None) == (source is None):
            self.err("bad-pairs", f"pairs `{b.name.name}` need either `from` or `source`",
                     b.name.span, "both given" if frm is not None else "neither given",
                     help="`from = CORPUS` with `chosen` and `rejected`, or `source = "
                          "transcripts(\"pairs.jsonl\", format = pairs)`")
            return None
        if frm is not None:
            view, block = frm
            if view.kind != "corpus":
                self.err("wrong-kind", "pairs are built from a corpus", c.nodes["from"].value.span,
                         f"`{block.name.name}` is pairs already")
                return None
            for side in ("chosen", "rejected"):
                if v[side] is None:
                    self.err("missing-field", f"pairs `{b.name.name}` built from a corpus need "
                             f"`{side}`", b.name.span, f"`{side}` is required",
                             help=f"add `{side} = outcome == \"...\"`")
                    return None
            self._holdout_exists(view, block, c.nodes["from"].value)
            return plan.PairsPlan(b.qualified, view, None, v["chosen"], v["rejected"], v["match"],
                                  self._origin(b))
        src = self._source(b, source)
        if src.format != "pairs":
            self.err("wrong-kind", "given pairs are read with `format = pairs`",
                     c.nodes["source"].value.span, f"format is `{src.format}`",
                     help="add `format = pairs`")
            return None
        return plan.PairsPlan(b.qualified, None, src, None, None, v["match"], self._origin(b))

    def _holdout_exists(self, view: plan.DataView, block: BlockDef, at: ast.Expr) -> bool:
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

    def _stage(self, c: _Checked) -> plan.StagePlan | None:
        v, b = c.values, c.block
        method = v.get("method")
        if method is INVALID or method is None:
            return None
        schema = SCHEMAS["stage"]
        ok = True
        for name, node in c.nodes.items():
            spec = schema.field(name)
            if spec.methods and method not in spec.methods:
                self.err("wrong-method", f"`{name}` applies to {' and '.join(spec.methods)} stages "
                         f"only", node.name.span, f"this is {_kind_article(method)} stage",
                         labels=[Label(c.nodes["method"].value.span, "method set here")],
                         help=f"remove `{name}`")
                ok = False
        data = v.get("data")
        if isinstance(data, tuple):
            view, block = data
            at = c.nodes["data"].value
            if method == "dpo" and view.kind != "pairs":
                self.err("dpo-needs-pairs", f"a dpo stage trains on preference pairs, but "
                         f"`{block.name.name}` is a corpus", at.span, "not preference pairs",
                         labels=[Label(block.name.span, "corpus defined here")],
                         help=f"build pairs from it in a `pairs` block, one field per line "
                              f"(`from = {block.name.name}`, `chosen = ...`, `rejected = ...`), "
                              "and write `data = NAME`")
                ok = False
            elif method == "sft" and view.kind != "corpus":
                self.err("sft-needs-corpus", f"an sft stage trains on a corpus, but "
                         f"`{block.name.name}` is preference pairs", at.span, "not a corpus",
                         help="give it a corpus, or set `method = dpo`")
                ok = False
            else:
                ok = self._holdout_exists(view, block, at) and ok
        if not ok or any(x is INVALID for x in v.values()):
            return None
        adapter = v["adapter"]
        lora = None
        if isinstance(adapter, FuncValue):
            a = adapter.args
            model = self._root_model(b)
            self.ev.lora_targets(c.nodes["adapter"].value, tuple(a["targets"]), model,
                                 self.checked[id(model)].values.get("from")
                                 if model is not None and id(model) in self.checked else None)
            lora = plan.LoraPlan(a["r"], float(a["alpha"] if a["alpha"] is not None else 2 * a["r"]),
                                 a["dropout"], tuple(a["targets"]), a["bias"], a["rslora"], a["dora"])
        skip = {"method", "model", "data", "adapter", "needs"}
        hyper = tuple(sorted((f.name, v[f.name]) for f in schema.fields
                             if f.name not in skip and (not f.methods or method in f.methods)))
        needs = tuple(r.block.qualified for r in v["needs"])
        return plan.StagePlan(b.qualified, method, v["model"].block.qualified, data[0], lora, hyper,
                              needs, self._origin(b))

    def _assemble(self, c: _Checked) -> plan.AssemblePlan | None:
        v, b = c.values, c.block
        if any(x is INVALID for x in v.values()):
            return None
        return plan.AssemblePlan(b.qualified, v["from"].block.qualified, v["merge"], v["dtype"],
                                 v["shard_size"], self._origin(b))

    def _root_model(self, block: BlockDef) -> BlockDef | None:
        seen = set()
        while block is not None and id(block) not in seen:
            seen.add(id(block))
            if block.kind.name == "model":
                return block
            checked = self.checked.get(id(block))
            if checked is None:
                return None
            nxt = checked.values.get({"export": "from", "assemble": "from", "stage": "model"}
                                     .get(block.kind.name, ""))
            block = nxt.block if isinstance(nxt, BlockRef) else None
        return None

    def _export(self, c: _Checked) -> plan.ExportPlan | None:
        v, b = c.values, c.block
        if any(x is INVALID for x in v.values()):
            return None
        quants = v["quants"]
        node = c.nodes["quants"].value
        items = node.items if isinstance(node, ast.ListExpr) else ()
        spans = {getattr(i, "name", None): i.span for i in items}
        ok = True
        seen = set()
        for q in quants:
            if q in seen:
                self.err("duplicate-quant", f"`{q}` is listed twice", spans.get(q, node.span),
                         "listed again")
                ok = False
            seen.add(q)
        model = self._root_model(b)
        shapes = None
        if model is not None:
            src = self.checked.get(id(model), _Checked(model, {}, {}, [])).values.get("from")
            if isinstance(src, FuncValue) and src.name == "init":
                shapes = {"hidden": src.args["hidden"], "ffn": src.args["ffn"]}
        for q in quants:
            block_len, imatrix = QUANT_TYPES[q]
            if imatrix:
                self.err("quant-needs-imatrix", f"`{q}` needs an importance matrix", spans.get(q, node.span),
                         "llama.cpp refuses it without one",
                         help="choose a type that needs none, such as `q4_k_m` or `iq4_xs`")
                ok = False
            elif shapes and block_len > 1:
                bad = {k: n for k, n in shapes.items() if n % block_len}
                if bad:
                    k, n = next(iter(bad.items()))
                    fits = [t for t, (bl, im) in QUANT_TYPES.items()
                            if not im and bl > 1 and all(x % bl == 0 for x in shapes.values())]
                    self.err("quant-shape", f"`{q}` needs rows divisible by {block_len}, but "
                             f"`{model.name.name}` has {k} = {n}", spans.get(q, node.span),
                             "llama.cpp would silently fall back to another type",
                             labels=[Label(model.name.span, "model defined here")],
                             help=(f"types that fit: {', '.join(f'`{t}`' for t in fits[:6])}"
                                   if fits else "only f32, f16 and bf16 fit these shapes"))
                    ok = False
        if not ok:
            return None
        return plan.ExportPlan(b.qualified, v["from"].block.qualified, v["format"], tuple(quants),
                               self._origin(b))

    def _target(self, ref: BlockRef, at: ast.Expr | None) -> plan.TargetRef | None:
        kind = ref.block.kind.name
        if kind != "export":
            return plan.TargetRef(kind, ref.block.qualified)
        checked = self.checked.get(id(ref.block))
        quants = checked.values.get("quants") if checked else None
        if not isinstance(quants, tuple):
            return None
        member = ref.member
        if member is None:
            if len(quants) == 1:
                return plan.TargetRef(kind, ref.block.qualified, quants[0])
            self.err("ambiguous-target", f"export `{ref.block.name.name}` writes "
                     f"{len(quants)} files", ref.span, "which one?",
                     help="name one: " + ", ".join(f"`{ref.block.name.name}.{q}`" for q in quants))
            return None
        if member not in quants:
            node = checked.nodes.get("quants")
            self.err("not-built", f"`{ref.block.name.name}.{member}` is never built", ref.span,
                     "no such output",
                     labels=[Label(node.value.span, f"`{ref.block.name.name}` writes these")] if node else [],
                     help=(did_you_mean(member, quants) + " " if did_you_mean(member, quants) else "")
                     + f"or add `{member}` to its quants")
            return None
        return plan.TargetRef(kind, ref.block.qualified, member)

    def _metric_targets(self, m: plan.MetricExpr, at: ast.Expr) -> plan.MetricExpr | None:
        if isinstance(m, plan.Arith):
            left, right = self._metric_targets(m.left, at), self._metric_targets(m.right, at)
            return None if left is None or right is None else plan.Arith(m.op, left, right)
        if isinstance(m, plan.MetricCall) and isinstance(m.target, BlockRef):
            target = self._target(m.target, at)
            if target is None:
                return None
            return plan.MetricCall(m.metric, target, m.data, m.args, m.attr)
        return m

    def _eval(self, c: _Checked) -> plan.EvalPlan | None:
        v, b = c.values, c.block
        if not any(isinstance(m, ast.Check) for m in b.members) and not v.get("metrics"):
            self.err("empty-eval", f"eval `{b.name.name}` checks nothing", b.name.span,
                     "no checks", help="add a gate: `check perplexity(data.holdout) <= 20`")
            return None
        if any(x is INVALID for x in v.values()):
            return None
        on = self._target(v["on"], c.nodes["on"].value)
        gates = []
        for (left, op, right), node in c.gates:
            left, right = self._metric_targets(left, node.expr), self._metric_targets(right, node.expr)
            if left is None or right is None:
                return None
            text = expr_text(node.expr)  # canonical: reformatting the file does not change it
            gates.append(plan.GatePlan(left, op, right, text, plan.Origin(
                node.span.source.path, node.span.line, node.span.column)))
        metrics = []
        for m, node in zip(v["metrics"], c.nodes["metrics"].value.items if "metrics" in c.nodes else ()):
            m = self._metric_targets(m, node)
            if m is None:
                return None
            metrics.append(m)
        if on is None:
            return None
        needs = tuple(r.block.qualified for r in v["needs"])
        return plan.EvalPlan(b.qualified, on, tuple(gates), tuple(metrics), needs, self._origin(b))


def check(program: Program) -> tuple[plan.Plan | None, list[Diagnostic]]:
    diagnostics: list[Diagnostic] = []
    result = _Checker(program, diagnostics).run()
    return result, diagnostics

"""`eval` blocks → EvalPlan: it checks something, and every measured target is built (an export
target names one of its quants)."""

from __future__ import annotations

from dataclasses import replace

from .. import ast, plan
from ..diagnostics import Label, did_you_mean
from ..evaluate import BlockRef, TaggedRef
from ..format import expr_text
from .common import Checked, Checker, has_invalid


def build(ck: Checker, c: Checked) -> plan.EvalPlan | None:
    v, b = c.values, c.block
    if not any(isinstance(m, ast.Check) for m in b.members) and not v.get("metrics"):
        ck.err("empty-eval", f"eval `{b.name.name}` checks nothing", b.name.span,
               "no checks", help="add a gate: `check perplexity(data.holdout) <= 20`")
        return None
    if has_invalid(v):
        return None
    on = target(ck, v["on"])
    gates = []
    for (left, op, right, confidence, test), node in c.gates:
        left, right = _metric_targets(ck, left, on, node), _metric_targets(ck, right, on, node)
        if left is None or right is None:
            return None
        text = expr_text(node.expr)  # canonical: reformatting the file does not change it
        gates.append(plan.GatePlan(left=left, op=op, right=right, text=text, origin=plan.Origin(
            node.span.source.path, node.span.line, node.span.column), confidence=confidence, test=test))
    metrics = []
    for m in v["metrics"]:
        m = _metric_targets(ck, m, on, c.nodes.get("metrics") or b.name)
        if m is None:
            return None
        metrics.append(m)
    if on is None:
        return None
    return plan.EvalPlan(name=b.qualified, on=on, gates=tuple(gates), metrics=tuple(metrics),
                         needs=tuple(r.block.qualified for r in v["needs"]), origin=ck.origin(b))


def target(ck: Checker, ref: BlockRef) -> plan.TargetRef | None:
    kind = ref.block.kind.name
    if kind != "export":
        return plan.TargetRef(kind, ref.block.qualified)
    checked = ck.checked.get(id(ref.block))
    quants = checked.values.get("quants") if checked else None
    if checked is None or not isinstance(quants, tuple):
        return None
    member = ref.member
    if member is None:
        if len(quants) == 1:
            return plan.TargetRef(kind, ref.block.qualified, quants[0])
        ck.err("ambiguous-target", f"export `{ref.block.name.name}` writes "
               f"{len(quants)} files", ref.span, "which one?",
               help="name one: " + ", ".join(f"`{ref.block.name.name}.{q}`" for q in quants))
        return None
    if member not in quants:
        node = checked.nodes.get("quants")
        hint = did_you_mean(member, quants)
        ck.err("not-built", f"`{ref.block.name.name}.{member}` is never built", ref.span,
               "no such output",
               labels=[Label(node.value.span, f"`{ref.block.name.name}` writes these")] if node else [],
               help=(hint + " " if hint else "") + f"or add `{member}` to its quants")
        return None
    return plan.TargetRef(kind, ref.block.qualified, member)


def _metric_targets(ck: Checker, m: plan.MetricExpr, on: plan.TargetRef | None,
                    at: ast.Check | ast.Field | ast.Ident) -> plan.MetricExpr | None:
    """Targets bound (`tagged(...)` to the eval's `on` when it names none); `at`: where the
    measurement is written, for a lm_eval on an exported file."""
    if isinstance(m, plan.Arith):
        left, right = _metric_targets(ck, m.left, on, at), _metric_targets(ck, m.right, on, at)
        return None if left is None or right is None else plan.Arith(m.op, left, right)
    if isinstance(m, plan.MetricCall) and isinstance(m.target, BlockRef):
        t = target(ck, m.target)
        if t is None:
            return None
        return plan.MetricCall(m.metric, t, m.data, m.args, m.attr)
    if isinstance(m, plan.MetricCall) and isinstance(m.target, TaggedRef):
        t = target(ck, m.target.target) if m.target.target is not None else on
        if t is None:
            return None
        return plan.MetricCall(m.metric, replace(t, tag=m.target.tag), m.data, m.args, m.attr)
    if isinstance(m, plan.MetricCall) and m.metric == "lm_eval" and m.target is None and on is not None \
            and on.kind == "export":
        ck.err("wrong-kind", f"lm_eval measures a model folder, and this eval is on `{on}`, an "
               "exported file", at.span, "lm_eval of an export",
               help="name the folder it was exported from: `lm_eval(MODEL, \"task\")` with an "
                    "`assemble`, a `stage` or a `model`")
        return None
    return m

"""`export` blocks → ExportPlan: each quant once, the format's own rules on its quants
(`formula/formats/<format>.py`), told the shapes of the model when it is made by init, and
the model's family among those the format's converter writes, where the family is known."""

from __future__ import annotations

from formula.formats import FORMATS

from .. import ast, plan
from ..diagnostics import Label, did_you_mean, one_of
from ..evaluate import FuncValue, model_family
from .common import Checked, Checker, has_invalid


def build(ck: Checker, c: Checked) -> plan.ExportPlan | None:
    v, b = c.values, c.block
    if has_invalid(v):
        return None
    fmt = FORMATS[v["format"]]
    quants = v["quants"]
    node = c.nodes["quants"].value
    items = node.items if isinstance(node, ast.ListExpr) else ()
    spans = {getattr(i, "name", None): i.span for i in items}
    ok = True
    seen = set()
    for q in quants:
        if q in seen:
            ck.err("duplicate-quant", f"`{q}` is listed twice", spans.get(q, node.span), "listed again")
            ok = False
        seen.add(q)
    foreign = [q for q in quants if q not in fmt.quants]  # another format's type
    for q in foreign:
        ck.err("wrong-quant", f"`{q}` is not a {fmt.name} quantization type", spans.get(q, node.span),
               f"not {fmt.name}", help=did_you_mean(q, fmt.quants) or f"{fmt.name} types: {one_of(fmt.quants)}")
    if foreign:
        return None
    model = ck.root_model(b)
    shapes = None
    if model is not None and id(model) in ck.checked:
        src = ck.checked[id(model)].values.get("from")
        if isinstance(src, FuncValue) and src.name == "init":
            shapes = {"hidden": src.args["hidden"], "ffn": src.args["ffn"]}
        family = model_family(model, src, ck.program.root.path)
        if fmt.architectures is not None and family is not None and family not in fmt.architectures:
            at = c.nodes["format"].value if "format" in c.nodes else b.name
            ck.err("unsupported-family", f"`{model.name.name}` is a {family} model, which the {fmt.name} "
                   f"converter does not write", at.span, f"no {fmt.name} for {family}",
                   labels=[Label(model.name.span, f"a {family} model")],
                   help=f"{fmt.name} writes {one_of(fmt.architectures)}; export another format, or "
                        "start from a model of one of these families")
            ok = False
    for p in fmt.rules(tuple(quants), model.name.name if model is not None else "", shapes):
        ck.err(p.code, p.message, spans.get(p.quant, node.span), p.label,
               labels=[Label(model.name.span, "model defined here")] if p.at_model and model is not None else [],
               help=p.help)
        ok = False
    if not ok:
        return None
    source = v["from"].block
    return plan.ExportPlan(name=b.qualified, source=source.qualified,
                           base_model=model.qualified if model is not None else source.qualified,
                           format=fmt.name, quants=tuple(quants), origin=ck.origin(b))

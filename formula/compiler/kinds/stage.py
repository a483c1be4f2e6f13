"""`stage` blocks → StagePlan: the method's own fields only on its stages, data of the kind its
method trains on, LoRA targets the model has; the shared settings and the method's options as
the typed records the train step's configuration holds."""

from __future__ import annotations

import dataclasses

from formula.contract.steps import StageSettings
from formula.methods import METHODS

from .. import plan
from ..diagnostics import Label
from ..evaluate import INVALID, FuncValue, _kind_article
from ..schema import SCHEMAS
from .common import Checked, Checker, has_invalid

SHARED = tuple(f.name for f in dataclasses.fields(StageSettings))


def build(ck: Checker, c: Checked) -> plan.StagePlan | None:
    v, b = c.values, c.block
    name = v.get("method")
    if name is INVALID or name is None:
        return None
    method = METHODS[name]
    schema = SCHEMAS["stage"]
    ok = True
    for field, node in c.nodes.items():
        spec = schema.field(field)
        if spec is not None and spec.methods and name not in spec.methods:
            ck.err("wrong-method", f"`{field}` applies to {_and(spec.methods)} stages only",
                   node.name.span, f"this is {_kind_article(name)} stage",
                   labels=[Label(c.nodes["method"].value.span, "method set here")],
                   help=f"remove `{field}`")
            ok = False
    data = v.get("data")
    if isinstance(data, tuple):
        view, block = data
        at = c.nodes["data"].value
        wanted = method.data
        if view.kind != wanted.block:
            article = _kind_article(name)
            if wanted.block == "pairs":
                ck.err(f"{name}-needs-pairs", f"{article} stage trains on {wanted.what}, but "
                       f"`{block.name.name}` is a corpus", at.span, wanted.label,
                       labels=[Label(block.name.span, "corpus defined here")],
                       help=f"build pairs from it in a `pairs` block, one field per line "
                            f"(`from = {block.name.name}`, `chosen = ...`, `rejected = ...`), "
                            "and write `data = NAME`")
            else:
                other = next((m.name for m in METHODS.values() if m.data.block == view.kind), None)
                ck.err(f"{name}-needs-{wanted.block}", f"{article} stage trains on {wanted.what}, but "
                       f"`{block.name.name}` is preference pairs", at.span, wanted.label,
                       help=f"give it a corpus, or set `method = {other}`" if other else "give it a corpus")
            ok = False
        else:
            ok = ck.holdout_exists(view, block, at) and ok
    if not ok or has_invalid(v):
        return None
    view = v["data"][0]
    adapter = v["adapter"]
    lora = None
    model = ck.root_model(b)
    if isinstance(adapter, FuncValue):
        a = adapter.args
        ck.ev.lora_targets(c.nodes["adapter"].value, tuple(a["targets"]), model,
                           ck.checked[id(model)].values.get("from")
                           if model is not None and id(model) in ck.checked else None)
        lora = plan.Lora(r=a["r"], alpha=float(a["alpha"] if a["alpha"] is not None else 2 * a["r"]),
                         dropout=a["dropout"], targets=tuple(a["targets"]), bias=a["bias"],
                         rslora=a["rslora"], dora=a["dora"])
    # A method's own field takes the method's default when the stage does not set it (methods
    # that share a field name may default it differently).
    options = method.options({k: v[k] for k in c.nodes})
    return plan.StagePlan(name=b.qualified, method=name, model=v["model"].block.qualified,
                          base_model=model.qualified if model is not None else v["model"].block.qualified,
                          data=view, adapter=lora, settings=StageSettings(**{k: v[k] for k in SHARED}),
                          options=options, needs=tuple(r.block.qualified for r in v["needs"]),
                          origin=ck.origin(b))


def _and(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]

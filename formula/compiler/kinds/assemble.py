"""`assemble` blocks → AssemblePlan."""

from __future__ import annotations

from .. import plan
from .common import Checked, Checker, has_invalid


def build(ck: Checker, c: Checked) -> plan.AssemblePlan | None:
    v, b = c.values, c.block
    if has_invalid(v):
        return None
    model = ck.root_model(b)
    stage = v["from"].block
    return plan.AssemblePlan(name=b.qualified, stage=stage.qualified,
                             base_model=model.qualified if model is not None else stage.qualified,
                             merge=v["merge"], dtype=v["dtype"], shard_size=v["shard_size"],
                             origin=ck.origin(b))

"""`pairs` blocks → PairsPlan: built from a corpus with `chosen` and `rejected`, or read as given."""

from __future__ import annotations

from .. import plan
from .common import Checked, Checker, has_invalid
from .corpus import source as source_of


def build(ck: Checker, c: Checked) -> plan.PairsPlan | None:
    v, b = c.values, c.block
    if has_invalid(v):
        return None
    frm, source = v["from"], v["source"]
    if (frm is None) == (source is None):
        ck.err("bad-pairs", f"pairs `{b.name.name}` need either `from` or `source`",
               b.name.span, "both given" if frm is not None else "neither given",
               help="`from = CORPUS` with `chosen` and `rejected`, or `source = "
                    "transcripts(\"pairs.jsonl\", format = pairs)`")
        return None
    if frm is not None:
        view, block = frm
        if view.kind != "corpus":
            ck.err("wrong-kind", "pairs are built from a corpus", c.nodes["from"].value.span,
                   f"`{block.name.name}` is pairs already")
            return None
        for side in ("chosen", "rejected"):
            if v[side] is None:
                ck.err("missing-field", f"pairs `{b.name.name}` built from a corpus need "
                       f"`{side}`", b.name.span, f"`{side}` is required",
                       help=f"add `{side} = outcome == \"...\"`")
                return None
        ck.holdout_exists(view, block, c.nodes["from"].value)
        return plan.PairsPlan(name=b.qualified, data=view, source=None, chosen=v["chosen"],
                              rejected=v["rejected"], match=v["match"], origin=ck.origin(b))
    src = source_of(ck, b, source)
    assert isinstance(src, plan.TranscriptSource)  # the schema takes `transcripts(...)` only here
    if src.format != "pairs":
        ck.err("wrong-kind", "given pairs are read with `format = pairs`",
               c.nodes["source"].value.span, f"format is `{src.format}`",
               help="add `format = pairs`")
        return None
    return plan.PairsPlan(name=b.qualified, data=None, source=src, chosen=None, rejected=None,
                          match=v["match"], origin=ck.origin(b))

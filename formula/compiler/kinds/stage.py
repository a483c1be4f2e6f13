"""`stage` blocks → StagePlan: the method's own fields only on its stages, data of the kind its
method trains on, LoRA targets the model has; the shared settings and the method's options as
the typed records the train step's configuration holds."""

from __future__ import annotations

import dataclasses
import importlib.util

from formula.contract.steps import StageSettings
from formula.methods import METHODS

from .. import plan
from ..diagnostics import Label, warning
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
    if not ok or has_invalid(v) or not _precision_fits(ck, c):
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
                          origin=ck.origin(b), resources=dict(v.get("resources") or {}))


def _and(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# Settings that need a CUDA device, and the package each needs: (field, value, what, package).
CUDA_ONLY = (("quantize", "nf4", "QLoRA (`quantize = nf4`) uses bitsandbytes' 4-bit CUDA kernels", "bitsandbytes"),
             ("attention", "flash_attention_2", "FlashAttention runs on CUDA only", "flash_attn"),
             ("liger", True, "Liger's kernels are Triton kernels, CUDA only", "liger_kernel"),
             ("precision", "f16", "f16 mixed precision (its gradient scaler) is CUDA only", None),
             ("sharding", "fsdp", "accelerate shards a model across GPUs only (on CPU it trains "
              "with DDP)", None))


def _precision_fits(ck: Checker, c: Checked) -> bool:
    """The stage's precision and memory settings against each other: what needs CUDA on a stage
    that says `device = cpu`, QLoRA without LoRA, f16 weights trained directly, FlashAttention
    in f32. A package these need that this machine lacks is a warning (the build machine may
    have it; the train step refuses to start without it)."""
    v, b = c.values, c.block
    ok = True

    def at(name: str):
        node = c.nodes.get(name)
        return node.value.span if node is not None else b.name.span

    def label(name: str, text: str) -> list[Label]:
        node = c.nodes.get(name)
        return [Label(node.value.span, text)] if node is not None else []

    for name, value, why, package in CUDA_ONLY:
        if v.get(name) != value:
            continue
        if v.get("device") == "cpu":
            ck.err("needs-cuda", f"`{name} = {_shown(value)}` needs a CUDA device, but this stage "
                   "runs on the CPU", at(name), why, labels=label("device", "`device = cpu` set here"),
                   help=f"remove `{name}`, or set `device = auto`")
            ok = False
        elif package is not None and importlib.util.find_spec(package) is None:
            ck.diags.append(warning(
                "not-installed", f"`{name} = {_shown(value)}` needs the {package.replace('_', '-')} "
                "package, which is not installed here", at(name), "needs " + package.replace("_", "-"),
                help="the stage refuses to start on a machine without it"))
    full = v.get("adapter") == "full"
    if v.get("sharding") == "fsdp" and not full:
        ck.err("fsdp-needs-full", "`sharding = fsdp` shards a full fine-tune, but this stage trains a "
               "LoRA adapter", at("sharding"), "for full fine-tuning", labels=label("adapter", "LoRA set here"),
               help="remove `sharding` (a LoRA stage that does not fit one device fits with `quantize = nf4`)")
        ok = False
    elif v.get("sharding") == "fsdp" and v.get("processes") == 1 and v.get("nodes") == 1:
        ck.diags.append(warning(
            "shards-nothing", "`sharding = fsdp` on one process shards nothing", at("sharding"),
            "one process", help="set `processes` to the GPUs of a node (and `nodes` for several)"))
    if v.get("quantize") == "nf4" and full:
        ck.err("qlora-needs-lora", "QLoRA trains a LoRA adapter on a frozen 4-bit base, but this stage "
               "trains every weight", at("quantize"), "a 4-bit base cannot be trained",
               labels=label("adapter", "full fine-tuning set here"),
               help="add `adapter = lora(r = 16)`, or remove `quantize`")
        ok = False
    if v.get("dtype") == "f16" and full:
        ck.err("f16-full", "f16 weights cannot be fine-tuned directly: small updates vanish and "
               "the gradient scaler refuses f16 gradients", at("dtype"), "full fine-tuning in f16",
               help="use `dtype = bf16`, f32 weights with `precision = f16`, or a `lora(...)` adapter "
                    "over the f16 base")
        ok = False
    if v.get("attention") == "flash_attention_2" and v.get("dtype") == "f32" and v.get("quantize") != "nf4":
        ck.err("flash-attention-f32", "FlashAttention computes in bf16 or f16 only, but this stage "
               "trains f32 weights", at("attention"), "FlashAttention",
               labels=label("dtype", "`dtype = f32` set here"), help="set `dtype = bf16`, or `attention = sdpa`")
        ok = False
    return ok


def _shown(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)

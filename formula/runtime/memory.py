"""How much memory a train step needs at its peak, estimated from the model's `config.json`
before anything is loaded; how its precision settings resolve on a device; what memory the
device has. The standard library only: `formula plan` estimates every train step with it, and
the train step refuses to start with it, before torch has loaded the weights.

The estimate is the memory the step adds to its process once the libraries are loaded:

    weights      every parameter in the dtype the stage trains in (`dtype`; 4-bit NF4 for
                 `quantize = nf4`, with the embeddings, norms and LM head in the compute dtype);
                 a full DPO stage's reference copy
    adapter      the LoRA matrices (f32; bf16 on a 4-bit base, as trl keeps them)
    gradients    one per trainable parameter, in its dtype
    optimizer    AdamW's two moments per trainable parameter, in its dtype (torch's fused AdamW,
                 the trainer's default, keeps no other copy)
    activations  what autograd keeps from the forward pass for the backward one, for batch ×
                 length tokens (× 2 for preference pairs): per layer and token a sum over the
                 tensors transformers' llama-family layers save (below), or, with gradient
                 checkpointing, each layer's input plus one layer recomputed
    workspace    the LM head's tile (trl computes the loss in tiles of 4096 tokens × 32768
                 vocabulary entries, never the whole logits; on CPU its backward holds about eight
                 f32 copies of the tile at once, on CUDA a Triton kernel folds it in place), the
                 f32 gradients of the hidden states and of the head that the backward accumulates,
                 and on CUDA the context and cuBLAS workspace

The peak is the static part (weights, adapter, optimizer) plus the larger of the two moments
of the backward pass: all activations still held (at its start) or all gradients made (at its
end), plus the workspace. On CPU, where the figure to compare is the resident set, two measured
terms come on top: what the trainer and its first step allocate for themselves (48 MiB), and
the quarter of the transient part that glibc's heap keeps from freed tensors.

The activation terms were read off the tensors autograd saves (a saved-tensors hook over the
forward pass of transformers 5's llama layers, bench/memory_estimate/saved.py), per layer and
token, in bytes, with `a` the bytes of the activation dtype, h the hidden size, kv the key/value
width, f the MLP width:

    frozen base          8h + 2a·h + 2a·kv + 3a·f     (the norms keep an f32 copy of their input)
    full fine-tuning     frozen base + 4a·h + a·f      (inputs of the trained norms and the down
                                                        projection)
    each LoRA module     8·in + 4r with dropout > 0; 4·in + 4r without (an f32 copy of the input;
                         an f32 base shares it among the modules that read the same input)
    padded batches       + a·T + a·h (sdpa's mask; padding-free batches have none)
    eager attention      + heads·T·(4 + a) (the attention probabilities; sdpa keeps none)

bench/memory_estimate compares the whole estimate with measured peaks.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

KiB, MiB, GiB = 1024, 1024**2, 1024**3
BYTES = {"f32": 4, "bf16": 2, "f16": 2}
ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
LINEAR_MODULES = ATTENTION_MODULES + MLP_MODULES
HEAD_TOKENS, HEAD_VOCAB = 4096, 32768  # trl's chunked log-probabilities: one tile at a time
NF4_BITS = 4.127  # 4 bits, an 8-bit absmax per 64 weights and an f32 one per 256 absmax (double quant)
CUDA_CONTEXT = 600 * MiB
CPU_TILE_COPIES = 8  # f32 copies of the head's tile trl's CPU fold holds at once (kernels/chunked_logprob.py)
# On CPU, measured (bench/memory_estimate, configurations 0, 2 and 3): the trainer's state and
# what the first step initialises, and the share of the transient memory (activations,
# workspace) that glibc's heap keeps after freeing it (tensors under its 32 MiB mmap threshold
# come from the heap, which fragments).
CPU_RUNTIME = 48 * MiB
CPU_HEAP_SLACK = 0.25  # CUDA context, cuBLAS workspace, the caching allocator's slack

MEMORY_LIMIT_ENV = "FORMULA_MEMORY_LIMIT"  # the memory a train step may use, instead of what it sees
MEMORY_CHECK_ENV = "FORMULA_MEMORY_CHECK"  # "off": estimate and record, but never refuse


# --- the model's shape ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a causal LM's `config.json` (llama, mistral, qwen2, qwen3 and
    the other llama-family decoders: attention, a gated MLP, RMS norms)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    tied: bool = False
    qkv_bias: bool = False
    context: int = 2048
    arch: str = "llama"

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "Shape":
        inner = cfg.get("text_config")
        text: dict[str, Any] = inner if isinstance(inner, dict) else cfg
        try:
            hidden = int(text["hidden_size"])
            heads = int(text["num_attention_heads"])
            return cls(vocab=int(text["vocab_size"]), hidden=hidden, layers=int(text["num_hidden_layers"]),
                       heads=heads, kv_heads=int(text.get("num_key_value_heads") or heads),
                       head_dim=int(text.get("head_dim") or hidden // heads),
                       ffn=int(text.get("intermediate_size") or 4 * hidden),
                       tied=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                       qkv_bias=bool(text.get("attention_bias", text.get("model_type") == "qwen2")),
                       context=int(text.get("max_position_embeddings") or 2048),
                       arch=str(text.get("model_type") or "llama"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"config.json lacks what the memory estimate needs ({exc})") from exc

    @classmethod
    def from_init(cls, source: dict[str, Any], vocab: int) -> "Shape":
        """A model `init` makes (formula/runtime/steps/model.py): untied, no biases."""
        return cls(vocab=vocab, hidden=source["hidden"], layers=source["layers"], heads=source["heads"],
                   kv_heads=source.get("kv_heads") or source["heads"],
                   head_dim=source["hidden"] // source["heads"], ffn=source["ffn"],
                   context=source.get("context", 2048), arch=source.get("arch", "llama"))

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def modules(self) -> dict[str, tuple[int, int]]:
        """Each linear module of a layer: (in features, out features)."""
        h, q = self.hidden, self.heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, self.kv), "v_proj": (h, self.kv), "o_proj": (q, h),
                "gate_proj": (h, self.ffn), "up_proj": (h, self.ffn), "down_proj": (self.ffn, h)}

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.modules().values())

    def other_params(self) -> int:
        """Embeddings, LM head, norms and biases: what stays unquantized on a 4-bit base."""
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        norms = (2 * self.layers + 1) * self.hidden
        bias = self.layers * (self.heads * self.head_dim + 2 * self.kv) if self.qkv_bias else 0
        return embed + norms + bias

    def params(self) -> int:
        return self.linear_params() + self.other_params()


# --- what the stage trains ------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """One train step as the estimate sees it (`setup_of` makes it from a step configuration)."""

    batch: int
    length: int                        # tokens of the longest sequence in a batch
    accumulate: int = 1                # (memory does not depend on it; what would fit says it)
    adapter: str = "full"              # full or lora
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ATTENTION_MODULES
    lora_dropout: float = 0.0
    weights: str = "f32"               # f32, bf16, f16 or nf4 (the base on a 4-bit QLoRA)
    compute: str = "f32"               # the activations' dtype: the weights', or autocast's
    checkpointing: bool = False
    sequences: int = 1                 # sequences per example: 2 for preference pairs
    reference_copy: bool = False       # a full DPO stage's frozen reference model
    device: str = "cpu"
    processes: int = 1
    sharded: bool = False              # FSDP: weights, gradients and optimizer state split over the processes
    nodes: int = 1                     # machines, `processes` on each (FSDP shards over them all)
    attention: str = "sdpa"
    padded: bool = True                # batches padded to their longest (not padding-free)

    @property
    def tokens(self) -> int:
        return self.batch * self.length * self.sequences


@dataclass(frozen=True)
class Estimate:
    shape: Shape
    setup: Setup
    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int                   # with the stage's own checkpointing setting
    activations_other: int             # with the other setting (for the plan's comparison)
    workspace: int
    overhead: int                      # CPU: the trainer's own state and glibc's heap slack
    peak: int                          # per process
    peak_other: int                    # per process, checkpointing the other way

    @property
    def total(self) -> int:
        """What the machine must hold: every process's peak on one CPU; per GPU on CUDA."""
        return self.peak * (self.setup.processes if self.setup.device == "cpu" else 1)

    def parts(self) -> str:
        s = self.setup
        w = "4-bit NF4" if s.weights == "nf4" else s.weights
        out = [f"weights {human(self.weights)} ({w})"]
        if self.adapter:
            out.append(f"adapter {human(self.adapter)}")
        out += [f"gradients {human(self.gradients)}", f"optimizer {human(self.optimizer)}"]
        tokens = f"{s.batch} × {s.length} tokens" + (" × 2 (chosen, rejected)" if s.sequences == 2 else "")
        ckpt = "with" if s.checkpointing else "without"
        other = "without" if s.checkpointing else "with"
        out.append(f"activations {human(self.activations)} ({tokens}, {ckpt} gradient checkpointing; "
                   f"{human(self.activations_other)} {other})")
        out.append(f"workspace {human(self.workspace)}")
        if self.overhead:
            out.append(f"runtime and allocator {human(self.overhead)}")
        return ", ".join(out)

    def summary(self) -> str:
        s = self.setup
        procs = f" × {s.processes} processes" if s.processes > 1 and s.device == "cpu" else ""
        other = "without" if s.checkpointing else "with"
        return (f"~{human(self.peak)}{procs} peak ({human(self.peak_other)} {other} gradient checkpointing)")


def activation_bytes_per_token(shape: Shape, setup: Setup, layer_count: int | None = None) -> int:
    """Bytes autograd keeps per token for `layer_count` layers (all by default), no checkpointing."""
    a = BYTES["bf16"] if setup.weights == "nf4" else BYTES[setup.compute]
    h, kv, f, heads = shape.hidden, shape.kv, shape.ffn, shape.heads
    per = 8 * h + 2 * a * h + 2 * a * kv + 3 * a * f  # the frozen base
    if setup.adapter == "full":
        per += 4 * a * h + a * f
    else:
        modules = shape.modules()
        targets = _lora_targets(setup.lora_targets)
        if setup.lora_dropout > 0:
            per += sum(8 * modules[t][0] + 4 * setup.lora_r for t in targets)
        elif a == 4 and setup.weights != "nf4":
            inputs = {"q_proj": "norm1", "k_proj": "norm1", "v_proj": "norm1", "o_proj": None,
                      "gate_proj": "norm2", "up_proj": "norm2", "down_proj": "down"}
            shared = {inputs[t] for t in targets if inputs[t]}
            per += 4 * h * len(shared & {"norm1", "norm2"}) + (4 * f if "down" in shared else 0)
            per += 4 * setup.lora_r * len(targets)
        else:
            per += sum(4 * modules[t][0] + 4 * setup.lora_r for t in targets)
    if setup.padded and setup.batch > 1:
        per += a * setup.length + a * h
    if setup.attention == "eager":
        per += heads * setup.length * (4 + (a if a < 4 else 0))
    layers = shape.layers if layer_count is None else layer_count
    head = 4 * h + a * h * (2 if setup.adapter == "full" else 1) + 64  # final norm, the head's input, ids
    return per * layers + head


def estimate(shape: Shape, setup: Setup) -> Estimate:
    s = setup
    wb = BYTES["bf16"] if s.weights == "nf4" else BYTES[s.weights]
    compute = BYTES["bf16"] if s.weights == "nf4" else BYTES[s.compute]
    if s.weights == "nf4":
        weights = math.ceil(shape.linear_params() * NF4_BITS / 8) + shape.other_params() * compute
    else:
        weights = shape.params() * wb
    if s.reference_copy and s.adapter == "full":
        weights *= 2
    modules = shape.modules()
    if s.adapter == "full":
        trainable, tb = shape.params(), wb
        adapter = 0
    else:
        trainable = shape.layers * sum(s.lora_r * (modules[t][0] + modules[t][1])
                                       for t in _lora_targets(s.lora_targets))
        tb = 2 if s.weights == "nf4" else 4
        adapter = trainable * tb
    gradients = trainable * tb
    optimizer = 2 * trainable * tb
    world = s.processes * s.nodes
    if s.sharded and world > 1:
        # FSDP keeps 1/N of each on a device, and gathers one layer's full weights at a time
        layer = weights // max(shape.layers, 1)
        weights, adapter, gradients, optimizer = (-(-x // world) for x in
                                                  (weights, adapter, gradients, optimizer))
        weights += layer
    elif s.adapter == "full" and world > 1:
        optimizer += gradients  # DDP's gradient buckets
    # autocast keeps a copy of each linear weight in the compute dtype through forward and backward
    cast = shape.linear_params() * compute if s.compute != s.weights and s.weights != "nf4" else 0
    n = s.tokens
    full_acts = n * activation_bytes_per_token(shape, s)
    one_layer = n * (activation_bytes_per_token(shape, s, 1) - activation_bytes_per_token(shape, s, 0))
    ckpt_acts = n * (shape.layers * compute * shape.hidden + activation_bytes_per_token(shape, s, 0)) + one_layer
    tile = min(n, HEAD_TOKENS) * min(shape.vocab, HEAD_VOCAB)
    if s.device == "cuda":  # Triton folds the tile in place
        head = 2 * tile * compute + CUDA_CONTEXT
    else:  # torch ops on the tile: its f32 copies live at once in the backward fold
        head = tile * compute + CPU_TILE_COPIES * tile * 4
    head_grads = n * shape.hidden * 4 + (shape.vocab * shape.hidden * 4 if s.adapter == "full" else 0)
    workspace = head + head_grads + cast
    static = weights + adapter + optimizer

    def overhead(acts: int) -> int:
        transient = max(acts, gradients + one_layer) + workspace
        return CPU_RUNTIME + int(CPU_HEAP_SLACK * transient) if s.device == "cpu" else 0

    def peak(acts: int) -> int:
        return static + max(acts, gradients + one_layer) + workspace + overhead(acts)

    acts, other = (ckpt_acts, full_acts) if s.checkpointing else (full_acts, ckpt_acts)
    return Estimate(shape, s, weights=weights, adapter=adapter, gradients=gradients, optimizer=optimizer,
                    activations=acts, activations_other=other, workspace=workspace,
                    overhead=overhead(acts), peak=peak(acts), peak_other=peak(other))


def _lora_targets(targets: tuple[str, ...]) -> tuple[str, ...]:
    if "all-linear" in targets:
        return LINEAR_MODULES
    known = tuple(t for t in targets if t in LINEAR_MODULES)
    return known or ATTENTION_MODULES


# --- precision: one resolution for the plan, the estimate and the train step ----------------------


@dataclass(frozen=True)
class Precision:
    weights: str            # f32, bf16, f16, or nf4 (a 4-bit base)
    compute: str            # the activations' dtype: f32, bf16 or f16
    autocast: str | None    # the trainer's mixed precision: bf16, f16, or None


def resolve_precision(dtype: str, precision: str, quantize: str, full: bool, device: str,
                      bf16_ok: bool) -> Precision:
    """The stage's `dtype`, `precision` and `quantize` on a device. `dtype = auto` is bf16 on a
    CUDA device that has it, f32 on CPU; on a GPU without bf16 it is f16 for LoRA and f32 for
    full fine-tuning (f16 weights cannot be trained directly). `precision = auto` is mixed
    precision on CUDA, in the weights' half dtype (bf16, else f16, over f32 weights), and none on
    CPU. A 4-bit base (`quantize = nf4`) computes in `dtype`'s half dtype."""
    cuda = device == "cuda"
    if dtype == "auto":
        base = ("bf16" if bf16_ok else ("f32" if full else "f16")) if cuda else "f32"
    else:
        base = dtype
    if precision == "auto":
        autocast = ({"bf16": "bf16", "f16": "f16"}.get(base) or ("bf16" if bf16_ok else "f16")) if cuda else None
    else:
        autocast = None if precision == "f32" else precision
    if quantize == "nf4":
        compute = base if base != "f32" else ("bf16" if bf16_ok or not cuda else "f16")
        return Precision("nf4", compute, autocast or compute)
    return Precision(base, autocast or base, autocast)


# --- a step configuration, as the estimate sees it ------------------------------------------------


def setup_of(config: dict[str, Any], device: str, bf16_ok: bool, length: int, padded: bool = True,
             sequences: int | None = None) -> Setup:
    """A Setup from a train step's configuration (as the lowering wrote it)."""
    adapter = config.get("adapter") or {}
    full = adapter.get("type") != "lora_plan"
    p = resolve_precision(config.get("dtype", "auto"), config.get("precision", "auto"),
                          config.get("quantize", "none"), full, device, bf16_ok)
    pairs = (config.get("data") or {}).get("kind") == "pairs"
    return Setup(batch=int(config.get("batch", 8)), length=length, accumulate=int(config.get("accumulate", 1)),
                 adapter="full" if full else "lora", lora_r=int(adapter.get("r", 16)),
                 lora_targets=tuple(adapter.get("targets", ATTENTION_MODULES)),
                 lora_dropout=float(adapter.get("dropout", 0.0) or 0.0),
                 weights=p.weights, compute=p.compute,
                 checkpointing=bool(config.get("gradient_checkpointing", True)),
                 sequences=sequences if sequences is not None else (2 if pairs else 1),
                 reference_copy=pairs and full and config.get("method") == "dpo",
                 device=device, processes=int(config.get("processes", 1)), nodes=int(config.get("nodes", 1)),
                 sharded=config.get("sharding") == "fsdp",
                 attention=config.get("attention", "sdpa"), padded=padded)


def alternatives(shape: Shape, setup: Setup, limit: int) -> list[tuple[str, Estimate]]:
    """What the stage could change to fit in `limit` bytes, each with its estimate: gradient
    checkpointing, a smaller batch with accumulation, LoRA, QLoRA, half-precision weights."""
    out: list[tuple[str, Setup]] = []
    if not setup.checkpointing:
        out.append(("gradient_checkpointing = true", replace(setup, checkpointing=True)))
    for b in sorted((d for d in range(1, setup.batch) if setup.batch % d == 0), reverse=True):
        s = replace(setup, batch=b, accumulate=setup.accumulate * (setup.batch // b))
        if estimate(shape, s).total <= limit or b == 1:
            out.append((f"batch = {b}, accumulate = {s.accumulate} (the same {setup.batch * setup.accumulate} "
                        "examples per optimizer step)", s))
            break
    if setup.weights == "f32":
        half = "bf16" if setup.device == "cpu" or setup.compute == "bf16" else "f16"
        if setup.adapter == "full" and half == "f16":
            pass
        else:
            out.append((f"dtype = {half}", replace(setup, weights=half, compute=half)))
    if setup.adapter == "full":
        lora = replace(setup, adapter="lora", lora_r=16, lora_targets=ATTENTION_MODULES, lora_dropout=0.05,
                       reference_copy=False)
        if lora.weights == "f32" and setup.device == "cuda":
            lora = replace(lora, weights=setup.compute, compute=setup.compute)
        out.append(("adapter = lora(r = 16)", lora))
        if setup.device == "cuda":
            out.append(("adapter = lora(r = 16), quantize = nf4 (QLoRA)",
                        replace(lora, weights="nf4", compute="bf16")))
        if not setup.checkpointing:
            out.append(("adapter = lora(r = 16), gradient_checkpointing = true",
                        replace(lora, checkpointing=True)))
    elif setup.weights != "nf4" and setup.device == "cuda":
        out.append(("quantize = nf4 (QLoRA)", replace(setup, weights="nf4", compute="bf16")))
    return [(what, estimate(shape, s)) for what, s in out]


# --- where the model's config.json is before the build --------------------------------------------


def hub_cache() -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_hub_file(repo: str, revision: str, name: str) -> Path | None:
    """A file of a hub model in the local Hugging Face cache, without the network."""
    folder = hub_cache() / ("models--" + repo.replace("/", "--"))
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    else:
        try:
            commit = (folder / "refs" / revision).read_text().strip()
        except OSError:
            return None
    path = folder / "snapshots" / commit / name
    return path if path.is_file() else None


def read_config(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the device and the memory it has -------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    kind: str                  # cpu or cuda
    name: str
    free: int | None           # bytes the step may use; None when unknown
    bf16: bool = True
    note: str = ""
    limited: bool = False      # `free` comes from FORMULA_MEMORY_LIMIT

    def describe(self) -> str:
        what = "free" if self.kind == "cuda" else "available"
        mem = (f"{human(self.free)} {'allowed by ' + MEMORY_LIMIT_ENV if self.limited else what}"
               if self.free is not None else "memory unknown")
        return f"{self.kind} ({self.name}, {mem})" + (f"; {self.note}" if self.note else "")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]i?B|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{MEMORY_LIMIT_ENV}={text!r} is not a size (e.g. 512MiB, 20GiB, 1073741824)")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024**4}
    return int(float(m.group(1)) * units[(m.group(2) or "b").lower()])


def memory_limit() -> int | None:
    text = os.environ.get(MEMORY_LIMIT_ENV)
    return parse_size(text) if text else None


def available_ram() -> int | None:
    """What a new allocation can take without swapping: MemAvailable (cgroup limits included)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * KiB
                break
    except OSError:
        try:
            import psutil  # type: ignore[import-untyped]

            avail = int(psutil.virtual_memory().available)
        except Exception:
            return None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < (1 << 60):
                room = int(limit) - int(Path(usage_file).read_text().strip())
                avail = room if avail is None else min(avail, room)
            break
        except (OSError, ValueError):
            continue
    return avail


def cpu_device() -> Device:
    limit = memory_limit()
    return Device("cpu", f"{os.cpu_count() or 1} cores", limit if limit is not None else available_ram(),
                  limited=limit is not None)


def probe_device(requested: str) -> Device:
    """The device a stage will run on, found without importing torch (for `formula plan`): CUDA
    when a GPU is visible and the installed torch is not a CPU build, and `device` allows it."""
    if requested != "cpu" and _gpu_visible() and not _torch_is_cpu_build():
        info = _nvidia_smi()
        limit = memory_limit()
        if info is not None:
            name, free, cap = info
            return Device("cuda", name, limit if limit is not None else free, bf16=cap >= 8.0,
                          limited=limit is not None)
        return Device("cuda", "GPU", limit, limited=limit is not None,
                      note="nvidia-smi did not say how much memory is free")
    dev = cpu_device()
    if requested == "cuda":
        return replace(dev, note="the stage asks for `device = cuda`, which this machine does not have")
    return dev


def _gpu_visible() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or any(Path("/proc/driver/nvidia/gpus").glob("*"))


def _torch_is_cpu_build() -> bool:
    from importlib import metadata

    try:
        return metadata.version("torch").endswith("+cpu")
    except metadata.PackageNotFoundError:
        return True


def _nvidia_smi() -> tuple[str, int, float] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.free,compute_cap", "--format=csv,noheader,nounits",
                              "-i", visible], capture_output=True, text=True, timeout=10).stdout
        name, free, cap = [x.strip() for x in out.strip().splitlines()[0].split(",")]
        return name, int(float(free)) * MiB, float(cap)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


# --- what the plan and the step say ----------------------------------------------------------------


def refusal(stage: str, est: Estimate, device: Device) -> str | None:
    """The message a train step fails with when its estimate exceeds what it can use, or None."""
    if device.free is None or est.total <= device.free:
        return None
    lines = [f"stage `{stage}` needs about {human(est.total)} at its peak on {device.describe()}: {est.parts()}"]
    fits = [(what, e) for what, e in alternatives(est.shape, est.setup, device.free) if e.total <= device.free]
    if fits:
        lines.append("  what would fit:")
        width = max(len(w) for w, _ in fits)
        lines += [f"    {w:<{width}}  ~{human(e.total)}" for w, e in fits]
    else:
        lines.append("  nothing this step can change fits: a smaller model, a shorter max_len, or a device "
                     "with more memory")
    lines.append(f"  (on CPU the estimate came within 13% of measured peaks, bench/memory_estimate; "
                 f"{MEMORY_LIMIT_ENV}=SIZE sets the memory a step may use, {MEMORY_CHECK_ENV}=off "
                 "trains anyway)")
    return "\n".join(lines)


def human(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


@dataclass
class StepMemory:
    """What `formula plan` prints under a train step."""

    estimate: Estimate | None
    device: Device
    why_unknown: str = ""
    length_note: str = ""
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        if self.estimate is None:
            return [f"memory: unknown ({self.why_unknown}); device {self.device.describe()}"] + self.problems
        e = self.estimate
        fits = "" if self.device.free is None else (
            "; fits" if e.total <= self.device.free else "; DOES NOT FIT: the step will refuse to start")
        out = [f"memory: {e.summary()} on {self.device.describe()}{fits}",
               f"  {e.parts()}" + (f"; {self.length_note}" if self.length_note else "")]
        return out + self.problems


def plan_step(graph_steps: dict[str, Any], name: str, output_of: Callable[[str], Path | None],
              device_of: Callable[[str], Device]) -> StepMemory:
    """The memory line of train step `name`: its base model's shape from the built model step's
    output, a local folder, the Hugging Face cache or `init`'s arguments; the sequence length
    from the stage, its tokenized data, or the model's context."""
    spec = graph_steps[name]
    cfg = spec.config
    device = device_of(cfg.get("device", "auto"))
    problems = []
    if cfg.get("quantize", "none") == "nf4" and device.kind != "cuda":
        problems.append("  QLoRA (`quantize = nf4`) needs a CUDA device: this stage cannot start here")
    model_step = name
    while graph_steps[model_step].kind != "model":
        dep = graph_steps[model_step].deps.get("model")
        if dep is None:
            return StepMemory(None, device, "no base model step", problems=problems)
        model_step = dep
    shape, why = _shape_of(graph_steps[model_step], output_of(model_step))
    if shape is None:
        return StepMemory(None, device, why, problems=problems)
    length, note = _length_of(graph_steps, spec, shape)
    packed = bool(cfg.get("packing"))
    setup = setup_of(cfg, device.kind, device.bf16, length, padded=not packed)
    if packed:
        setup = replace(setup, batch=1, length=setup.batch * length)  # one row of every packed example
    return StepMemory(estimate(shape, setup), device, length_note=note, problems=problems)


def _shape_of(model_spec: Any, built: Path | None) -> tuple[Shape | None, str]:
    cfg = read_config(built / "config.json") if built is not None else None
    src = model_spec.config.get("source") or {}
    kind = src.get("type")
    if cfg is None and kind == "path_source":
        cfg = read_config(Path(src["dir"]) / "config.json")
        if cfg is None:
            return None, f"no config.json in {src['dir']}"
    if cfg is None and kind == "hub_source":
        cfg = read_config(cached_hub_file(src["id"], src.get("commit") or src.get("revision", "main"),
                                          "config.json"))  # the pinned commit where the lock has one
        if cfg is None:
            return None, (f"{src['id']}@{src.get('revision', 'main')} is not in the Hugging Face cache "
                          f"({hub_cache()}); its config.json is fetched at build time")
    if cfg is not None:
        try:
            return Shape.from_config(cfg), ""
        except ValueError as exc:
            return None, str(exc)
    if kind == "init_source":
        tok = model_spec.config.get("tokenizer") or {}
        if tok.get("type") == "trained_tokenizer":
            return Shape.from_init(src, int(tok["vocab"])), ""
        return None, "the vocabulary of its tokenizer is known once the model step has run"
    return None, "the base model's config.json is not known before the build"


def _length_of(steps: dict[str, Any], spec: Any, shape: Shape) -> tuple[int, str]:
    cfg = spec.config
    if cfg.get("max_len"):
        return int(cfg["max_len"]), ""
    data = steps.get(spec.deps.get("data", ""))
    if data is not None and data.kind == "tokenize":
        for key in ("pack_to", "max_len"):
            if data.config.get(key):
                return int(data.config[key]), ""
    return shape.context, f"no max_len: assumed the model's context, {shape.context} tokens"

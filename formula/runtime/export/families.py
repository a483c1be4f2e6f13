"""What each model family needs beyond the common GGUF layout, keyed by transformers'
`model_type`: llama.cpp's architecture, whether Q/K are permuted to its rotary layout, an
offset on norm weights, and the family's own metadata. Tensor names come from the `gguf`
package's own map for the architecture; fused tensors (Phi-3's qkv and gate/up) are what
llama.cpp reads, so nothing is split.

The names of this registry are `formula.formats.gguf.ARCHITECTURES`, which the checker uses to
refuse an export of a family no converter knows before anything is trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


class FamilyError(Exception):
    """A model of a known family with a setting llama.cpp would run differently."""


def _nothing(writer: Any, config: dict) -> None:
    return None


@dataclass(frozen=True)
class Family:
    arch: str  # gguf.MODEL_ARCH member
    permute_qk: bool = False  # llama.cpp's llama graph rotates interleaved pairs, HF halves
    norm_offset: float = 0.0  # Gemma's RMSNorm multiplies by (1 + w); llama.cpp by w
    metadata: Callable[[Any, dict], None] = _nothing  # the family's own keys
    rope_dims: Callable[[dict], int] | None = None  # rotated dimensions per head, if not all
    pre_tokenizer: str | None = None  # what transformers forces on this family's tokenizers
    # A multimodal model whose language model alone is converted (llama.cpp keeps the vision
    # tower in a separate projector file, which is not written): where its language model's
    # tensors and settings are, and the tensors left out.
    language_model: str | None = None  # the prefix of its tensors, e.g. "language_model."
    left_out: tuple[str, ...] = ()  # prefixes of the tensors not converted
    # Where llama.cpp runs a model of the family differently from transformers, given its config.
    caveats: Callable[[dict], list[str]] = lambda config: []


def language_config(config: dict, family: Family) -> dict:
    """The settings of the model llama.cpp runs: a multimodal model's `text_config`."""
    if family.language_model is None:
        return config
    return {**config, **(config.get("text_config") or {})}


def language_tensor(name: str, family: Family) -> str | None:
    """A tensor's name as its family's text-only model has it, or None when it is left out."""
    if family.language_model is None:
        return name
    if name.startswith(family.left_out):
        return None
    if name.startswith(family.language_model):
        return name[len(family.language_model):]
    return name


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def rope_parameters(config: dict) -> dict:
    """transformers 5 writes `rope_parameters` (per attention kind for Gemma 3), older configs
    `rope_theta` and `rope_scaling`; the full-attention layers' settings either way."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope = dict(rope.get("full_attention", rope))
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope["type"]
    return rope


def llama3_rope_factors(config: dict) -> np.ndarray:
    """The `rope_freqs` tensor llama.cpp divides Llama 3.x's rotary frequencies by, computed as
    transformers' `_compute_llama3_parameters` scales them (and llama.cpp's converter writes)."""
    rope = rope_parameters(config)
    dim = head_dim(config)
    freqs = 1.0 / (float(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old = float(rope.get("original_max_position_embeddings", 8192))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _sliding_layers(config: dict) -> list[bool] | None:
    types = config.get("layer_types")
    if not types:
        return None
    return [t == "sliding_attention" for t in types]


def _attention_scale(config: dict, family: str, big_layers: int) -> None:
    """llama.cpp scales Gemma's queries by 1/sqrt(head_dim) (by 1/sqrt(hidden/heads) for the
    27B models, which it knows by their layer count); transformers by
    `query_pre_attn_scalar`^-1/2. A model where the two differ would run differently."""
    want = config.get("query_pre_attn_scalar")
    if want is None:
        return
    big = config["num_hidden_layers"] == big_layers
    used = config["hidden_size"] // config["num_attention_heads"] if big else head_dim(config)
    if int(want) != used:
        raise FamilyError(f"{family}: query_pre_attn_scalar {want} differs from the "
                          f"{'hidden/heads' if big else 'head_dim'} ({used}) llama.cpp scales queries by")


def _gemma_common(writer: Any, config: dict) -> None:
    if config.get("sliding_window"):
        writer.add_sliding_window(int(config["sliding_window"]))
    pattern = _sliding_layers(config)
    if pattern is not None:
        writer.add_sliding_window_pattern(pattern)
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))


def _gemma2(writer: Any, config: dict) -> None:
    _attention_scale(config, "gemma2", big_layers=46)
    _gemma_common(writer, config)
    if config.get("attn_logit_softcapping"):
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))


def _gemma3(writer: Any, config: dict) -> None:
    _attention_scale(config, "gemma3", big_layers=62)
    if config.get("attn_logit_softcapping"):
        raise FamilyError("gemma3: attention logit soft-capping, which llama.cpp's gemma3 does not apply")
    _gemma_common(writer, config)
    local = (config.get("rope_parameters") or {}).get("sliding_attention") or {}
    base = local.get("rope_theta", config.get("rope_local_base_freq"))
    if base is not None:
        writer.add_rope_freq_base_swa(float(base))


def _phi3(writer: Any, config: dict) -> None:
    rope = rope_parameters(config)
    orig = rope.get("original_max_position_embeddings", config.get("original_max_position_embeddings"))
    if orig:
        writer.add_rope_scaling_orig_ctx_len(int(orig))


def _phi3_rope_dims(config: dict) -> int:
    factor = rope_parameters(config).get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    return int(factor * config["hidden_size"]) // config["num_attention_heads"]


FAMILIES: dict[str, Family] = {
    "llama": Family("LLAMA", permute_qk=True),
    "mistral": Family("LLAMA", permute_qk=True, caveats=lambda c: [
        f"llama.cpp runs Mistral as llama, without its sliding window: past {c['sliding_window']} tokens "
        "it attends to more than transformers does"] if c.get("sliding_window") else []),
    "qwen2": Family("QWEN2", pre_tokenizer="qwen2"),
    "qwen3": Family("QWEN3"),
    "gemma2": Family("GEMMA2", norm_offset=1.0, metadata=_gemma2),
    "gemma3_text": Family("GEMMA3", norm_offset=1.0, metadata=_gemma3),
    "gemma3": Family("GEMMA3", norm_offset=1.0, metadata=_gemma3, language_model="language_model.",
                     left_out=("vision_tower.", "multi_modal_projector.")),
    "phi3": Family("PHI3", metadata=_phi3, rope_dims=_phi3_rope_dims, caveats=lambda c: [
        f"llama.cpp disables Phi-3's sliding window: past {c['sliding_window']} tokens it attends to "
        "more than transformers does"] if c.get("sliding_window") else []),
}

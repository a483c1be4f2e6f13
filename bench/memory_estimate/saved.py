"""The activation terms of the memory estimate against the tensors autograd really saves.

    python bench/memory_estimate/saved.py

For llama layers of several shapes, full fine-tuning and LoRA (with and without dropout), f32
and bf16: the bytes the forward pass hands to autograd for the backward pass (a saved-tensors
hook, each storage counted once, parameters excluded), for one layer and one token (a two-layer
model less a one-layer one), beside `activation_bytes_per_token` of formula/runtime/memory.py.
The estimate's per-layer terms were read off this; they should agree exactly (within a few
bytes per token: the rotary tables and per-token scalars).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
from formula.runtime import memory as M  # noqa: E402

SHAPES = [(128, 4, 2, 256, 128), (256, 4, 2, 512, 128), (256, 8, 8, 1024, 128), (384, 6, 2, 512, 256)]
MODES = [("full", torch.float32, None, 0.0), ("full", torch.bfloat16, None, 0.0),
         ("lora", torch.float32, ("q_proj", "k_proj", "v_proj", "o_proj"), 0.05),
         ("lora", torch.float32, ("q_proj", "k_proj", "v_proj", "o_proj"), 0.0),
         ("lora", torch.bfloat16, ("q_proj", "k_proj", "v_proj", "o_proj"), 0.0),
         ("lora", torch.float32, M.LINEAR_MODULES, 0.0), ("lora", torch.bfloat16, M.LINEAR_MODULES, 0.05)]


def saved_bytes(h, layers, heads, kv, ffn, T, dtype, targets, dropout, padded):
    cfg = LlamaConfig(vocab_size=512, hidden_size=h, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).to(dtype)
    if targets:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout,
                                                 target_modules=list(targets), task_type="CAUSAL_LM"))
        inner = model.get_base_model().model
    else:
        inner = model.model
    model.enable_input_require_grads()
    model.train()
    batch = 2
    ids = torch.randint(0, 512, (batch, T))
    mask = torch.ones(batch, T, dtype=torch.long)
    if padded:
        mask[0, T // 2:] = 0
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        inner(input_ids=ids, attention_mask=mask)
    return sum(seen.values()) / (batch * T)


def main() -> None:
    torch.manual_seed(0)
    worst = 0.0
    print(f"{'shape (h, heads, kv heads, ffn, T)':36} {'mode':34} {'saved':>8} {'estimate':>8}  bytes/token/layer")
    for h, heads, kv, ffn, T in SHAPES:
        shape = M.Shape(vocab=512, hidden=h, layers=1, heads=heads, kv_heads=kv, head_dim=h // heads, ffn=ffn)
        for adapter, dtype, targets, dropout in MODES:
            for padded in (False, True):
                got = (saved_bytes(h, 2, heads, kv, ffn, T, dtype, targets, dropout, padded)
                       - saved_bytes(h, 1, heads, kv, ffn, T, dtype, targets, dropout, padded))
                name = "f32" if dtype == torch.float32 else "bf16"
                setup = M.Setup(batch=2, length=T, adapter=adapter, lora_r=16, lora_targets=targets or (),
                                lora_dropout=dropout, weights=name, compute=name, padded=padded)
                want = M.activation_bytes_per_token(shape, setup, 1) - M.activation_bytes_per_token(shape, setup, 0)
                mode = (f"{adapter} {name}" + (f" {len(targets)} targets dropout {dropout}" if targets else "")
                        + (" padded" if padded else ""))
                worst = max(worst, abs(want - got) / got)
                print(f"{str((h, heads, kv, ffn, T)):36} {mode:34} {got:8.0f} {want:8.0f}")
    print(f"largest difference: {worst:.1%}")


if __name__ == "__main__":
    main()

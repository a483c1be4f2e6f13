"""llama.cpp sessions as the evals and parity tests need them: an f32 KV cache (llama.cpp's
default f16 cache alone moves logits by ~4e-3), quiet, every core."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def open_gguf(path: Path, n_ctx: int = 2048, logits_all: bool = False, vocab_only: bool = False):
    """A llama.cpp model, closed on exit (its finaliser fails at interpreter shutdown)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx or 512, 512), logits_all=logits_all,
                 vocab_only=vocab_only, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False,
                 n_threads=os.cpu_count() or 1, seed=0)
    try:
        yield llm
    finally:
        llm.close()


def logits(llm, ids: list[int]):
    """Logits at every position of `ids` (numpy, len(ids) × vocab), from a fresh context."""
    llm.reset()
    llm.eval(ids)
    return llm.scores[: len(ids)].copy()


def metadata(path: Path) -> dict[str, object]:
    """The GGUF's key-value metadata, strings decoded (no tensors are read)."""
    import gguf

    reader = gguf.GGUFReader(path)
    out: dict[str, object] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - an exotic field type is not worth failing over
            continue
    return out


def tensor_types(path: Path) -> dict[str, int]:
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts

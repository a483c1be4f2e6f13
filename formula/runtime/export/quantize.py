"""Quantization through llama.cpp's own quantizer, refusing its silent fallbacks.

llama.cpp quantizes a tensor whose rows do not divide the type's block into another type and
returns success. The rows are checked before (from the GGUF's tensor table, so it holds for
any model) and llama.cpp's log is read after, so a fallback is an error either way.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from .convert import ConvertError

# Quantized types and the row length each needs; f32/f16/bf16 are written by the converter.
BLOCK = {"q4_0": 32, "q4_1": 32, "q5_0": 32, "q5_1": 32, "q8_0": 32, "iq4_nl": 32,
         "q2_k": 256, "q2_k_s": 256, "q3_k_s": 256, "q3_k_m": 256, "q3_k_l": 256,
         "q4_k_s": 256, "q4_k_m": 256, "q5_k_s": 256, "q5_k_m": 256, "q6_k": 256,
         "iq4_xs": 256, "iq3_s": 256, "iq3_m": 256, "iq3_xs": 256, "tq1_0": 256, "tq2_0": 256}


def ftype(name: str) -> int:
    import llama_cpp

    const = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None)
    if const is None or name not in BLOCK:
        raise ConvertError(f"`{name}` is not a quantization type llama.cpp runs without an "
                           f"importance matrix (choose one of {', '.join(BLOCK)})")
    return const


def rows_that_do_not_fit(gguf_path: Path, name: str) -> list[str]:
    """Tensors llama.cpp would quantize whose rows the type's block does not divide."""
    import gguf

    block = BLOCK[name]
    bad = []
    for t in gguf.GGUFReader(gguf_path).tensors:
        shape = [int(x) for x in t.shape]  # ne0 first: the row length
        if len(shape) >= 2 and shape[0] % block:
            bad.append(f"{t.name} (rows of {shape[0]})")
    return bad


def quantize(src: Path, out: Path, name: str, threads: int | None = None) -> list[str]:
    """Quantize `src` (an f32/f16/bf16 GGUF) to `out`; returns llama.cpp's log lines."""
    import llama_cpp

    code = ftype(name)
    bad = rows_that_do_not_fit(Path(src), name)
    if bad:
        raise ConvertError(f"`{name}` needs rows divisible by {BLOCK[name]}, but "
                           f"{', '.join(bad[:4])}{' …' if len(bad) > 4 else ''} do not; llama.cpp "
                           "would silently store them as another type. Choose a type with a "
                           "smaller block (q8_0, q4_0) or f16")
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):  # noqa: ARG001 - ctypes signature
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = code
        params.nthread = threads or os.cpu_count() or 1
        status = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    finally:
        from llama_cpp import _logger  # llama-cpp-python's own callback, which honours `verbose`

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    log = "".join(lines)
    if status != 0:
        raise ConvertError(f"llama.cpp could not quantize to `{name}` (status {status}): "
                           f"{log.strip().splitlines()[-1] if log.strip() else 'no message'}")
    fallbacks = [l for l in log.splitlines() if "fallback" in l.lower()]
    if fallbacks:
        raise ConvertError(f"llama.cpp fell back to another type for some tensors: {fallbacks[0].strip()}")
    return log.splitlines()

"""GGUF for llama.cpp: one file per quantization type (`gguf.E.Q` steps write `model.gguf`).

The quant types are llama.cpp's (LLAMA_FTYPE_MOSTLY_*), with the row length each needs and
whether it needs an importance matrix. A row that does not divide makes llama.cpp fall back
silently to another type, so the checker refuses it instead; types that need an importance
matrix are refused too (formula makes none yet). The runtime side, converter and quantizer, is
`formula/runtime/formats/gguf.py` with `formula/runtime/export/`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from formula.formats import ExportFormat, Problem, Quant

# The families the converter writes (transformers' `model_type`); the registry that converts
# them is formula/runtime/export/families.py. An export of any other family is refused by the
# checker, before anything is trained.
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text", "phi3")

QUANTS: dict[str, Quant] = {
    "f32": Quant(), "f16": Quant(), "bf16": Quant(),
    "q4_0": Quant(32), "q4_1": Quant(32), "q5_0": Quant(32), "q5_1": Quant(32),
    "q8_0": Quant(32), "iq4_nl": Quant(32),
    "q2_k": Quant(256), "q2_k_s": Quant(256), "q3_k_s": Quant(256), "q3_k_m": Quant(256),
    "q3_k_l": Quant(256), "q4_k_s": Quant(256), "q4_k_m": Quant(256),
    "q5_k_s": Quant(256), "q5_k_m": Quant(256), "q6_k": Quant(256), "iq4_xs": Quant(256),
    "iq3_s": Quant(256), "iq3_m": Quant(256), "iq3_xs": Quant(256),
    "tq1_0": Quant(256), "tq2_0": Quant(256),
    "iq2_xxs": Quant(256, True), "iq2_xs": Quant(256, True), "iq2_s": Quant(256, True),
    "iq2_m": Quant(256, True), "iq1_s": Quant(256, True), "iq1_m": Quant(256, True),
    "iq3_xxs": Quant(256, True),
}


def rules(quants: tuple[str, ...], model: str, shapes: dict[str, int] | None) -> list[Problem]:
    out = []
    for q in quants:
        quant = QUANTS[q]
        if quant.imatrix:
            out.append(Problem("quant-needs-imatrix", q, f"`{q}` needs an importance matrix",
                               "llama.cpp refuses it without one",
                               "choose a type that needs none, such as `q4_k_m` or `iq4_xs`"))
        elif shapes and quant.row > 1:
            bad = {k: n for k, n in shapes.items() if n % quant.row}
            if bad:
                k, n = next(iter(bad.items()))
                fits = [t for t, x in QUANTS.items()
                        if not x.imatrix and x.row > 1 and all(v % x.row == 0 for v in shapes.values())]
                out.append(Problem(
                    "quant-shape", q, f"`{q}` needs rows divisible by {quant.row}, but `{model}` has {k} = {n}",
                    "llama.cpp would silently fall back to another type",
                    f"types that fit: {', '.join(f'`{t}`' for t in fits[:6])}" if fits
                    else "only f32, f16 and bf16 fit these shapes", at_model=True))
    return out


def serve(path: Path, host: str, port: int, name: str, backend: str, program: Callable[[str], Path]) -> list[str]:
    """The file behind an OpenAI-compatible server, with the chat template embedded in it.

    llama.cpp's llama-server (`--jinja`) turns the `<tool_call>` blocks the template renders into
    OpenAI `tool_calls`, and serves the Anthropic Messages API at /v1/messages too; `program`
    finds or builds it (formula/runtime/export/llama_server.py).
    llama-cpp-python's server needs nothing built, but returns tool calls only when one is forced.
    Both keep an f32 KV cache, as the evals do (the f16 default moves logits by ~4e-3)."""
    if backend == "llama-cpp-python":
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", name,
                "--host", host, "--port", str(port), "--n_ctx", "0", "--type_k", "0", "--type_v", "0"]
    return [str(program("llama-server")), "--model", str(path), "--alias", name, "--host", host, "--port", str(port),
            "--jinja", "--ctx-size", "0", "--cache-type-k", "f32", "--cache-type-v", "f32", "--no-webui"]


FORMAT = ExportFormat(name="gguf", doc="GGUF files for llama.cpp", file="model.gguf", quants=QUANTS,
                      rules=rules, architectures=ARCHITECTURES, serve_first=("q8_0", "q6_k", "q5_k_m", "q4_k_m"), serve=serve,
                      serve_backends=("llama-server", "llama-cpp-python"))

"""Step implementations, one module per kind. `FORMULA_STEPS=pkg` points the build at another
package with modules of the same names (tests use cheap stand-ins this way)."""

from __future__ import annotations

import os

KINDS = ("corpus", "tokenizer", "model", "tokenize", "pairs", "train", "assemble", "gguf", "eval")


def module_for(kind: str) -> str:
    package = os.environ.get("FORMULA_STEPS", "formula.runtime.steps")
    return f"{package}.{kind}"

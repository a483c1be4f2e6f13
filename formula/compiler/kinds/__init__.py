"""Per block kind: the rules of its domain and the plan record it builds from its checked fields.

`check.py` checks every block's fields against the schema and runs the whole-formula rules
(references, cycles, unused vars); then, for each block the root formula reaches, it calls the
builder of the block's kind here. A builder reports what is wrong through the checker and
returns None, or returns the block's plan record.
"""

from __future__ import annotations

from typing import Any, Callable

from . import assemble, corpus, eval, export, model, pairs, stage
from .common import Checked, Checker

Builder = Callable[[Checker, Checked], Any]

# kind → (builder, the Plan table its records go to)
BUILDERS: dict[str, tuple[Builder, str]] = {
    "model": (model.build, "models"),
    "corpus": (corpus.build, "corpora"),
    "pairs": (pairs.build, "pairs"),
    "stage": (stage.build, "stages"),
    "assemble": (assemble.build, "assembles"),
    "export": (export.build, "exports"),
    "eval": (eval.build, "evals"),
}

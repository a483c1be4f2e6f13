"""formula: training formulas compiled into fine-tuned models.

The code lives in the repository's `cli/`, `compiler/` and `runtime/` folders, installed as
`formula.cli`, `formula.compiler` and `formula.runtime`.
"""

__version__ = "0.1.0"

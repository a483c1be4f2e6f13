"""formula: training formulas compiled into fine-tuned models.

`formula.compiler` turns formula text into a typed plan and step configurations,
`formula.runtime` runs the step graph against the content-addressed store, and `formula.cli`
is the `formula` command. Below both, `formula.contract` holds what they share, and
`formula.methods` and `formula.formats` the training methods and export formats, one module
each. docs/architecture.md has the layers.
"""

__version__ = "0.1.0"

"""Writes docs/reference.md from the compiler's schema, so the field tables never drift.

    python docs/gen_reference.py          (tests/test_docs.py fails when it is stale)
"""

from __future__ import annotations

from pathlib import Path

from formula.contract import types as T
from formula.compiler.schema import (METADATA_FIELDS, METRICS, SCHEMAS, GATE_TESTS, TAGGED, VAR_TYPES,
                                    FieldSpec)
from formula.formats import FORMATS

OUT = Path(__file__).resolve().parent / "reference.md"


def type_text(t: T.Type) -> str:
    if isinstance(t, T.Symbol):
        return "name" if t.open else " \\| ".join(f"`{c}`" for c in t.choices)
    if isinstance(t, T.OneOf):
        return " \\| ".join(type_text(o) for o in t.options)
    if isinstance(t, T.Func):
        return f"`{t.name}(...)`"
    if isinstance(t, T.ListOf):
        return f"list of {type_text(t.item)}"
    if isinstance(t, T.Number):
        bounds = t.bounds_text()
        return ("int" if t.integer else "number") + (f" ({bounds})" if bounds else "")
    if isinstance(t, T.Fraction):
        return f"percent ({t.bounds_text()})"
    if isinstance(t, T.Size):
        return "size in tokens" if t.dimension == "tokens" else "size in bytes"
    if isinstance(t, T.Ref):
        return "reference to " + " or ".join(t.kinds)
    return {T.Str: "string", T.Bool: "bool", T.DataRef: "corpus (`.train`, `.holdout`, `where`) or pairs",
            T.Target: "model, stage, assemble or `export.quant`", T.Predicate: "condition",
            T.Metric: "metric"}.get(type(t), type(t).__name__)


def default_text(f: FieldSpec) -> str:
    if f.required:
        return "required"
    if f.default is None:
        return "—"
    if isinstance(f.default, tuple):
        return "[" + ", ".join(map(str, f.default)) + "]"
    if isinstance(f.default, bool):
        return "true" if f.default else "false"
    if isinstance(f.type, T.Fraction):
        return f"{f.default * 100:g}%"
    return f"`{f.default}`"


def funcs_of(t: T.Type, found: dict) -> None:
    if isinstance(t, T.Func):
        found.setdefault(t.name, t)
        for p in t.params:
            funcs_of(p.type, found)
    elif isinstance(t, T.OneOf):
        for o in t.options:
            funcs_of(o, found)
    elif isinstance(t, T.ListOf):
        funcs_of(t.item, found)


def render() -> str:
    out = ["# Formula reference", "",
           "Generated from `formula/compiler/schema.py` (with the fields of `formula/contract/steps.py`, the",
           "training methods in `formula/methods/` and the export formats in `formula/formats/`) by",
           "`docs/gen_reference.py`; do not edit by hand.",
           "The language itself is described in [language.md](language.md).", ""]
    funcs: dict[str, T.Func] = {}
    for kind, schema in SCHEMAS.items():
        out += [f"## `{kind}`", "", schema.doc[0].upper() + schema.doc[1:] + ".", "",
                "| field | type | default | notes |", "|---|---|---|---|"]
        for f in schema.fields:
            notes = f.doc + (f" ({', '.join(f.methods)} stages only)" if f.methods else "")
            out.append(f"| `{f.name}` | {type_text(f.type)} | {default_text(f)} | {notes} |")
            funcs_of(f.type, funcs)
        if schema.checks:
            out += ["", "Also: `check METRIC OP THRESHOLD` lines (see metrics below), and "
                    "`check significant(METRIC OP METRIC, confidence = 95%)`: the comparison must also "
                    "hold in all but 1 - confidence of the paired bootstrap resamples of the sessions; "
                    "`check not_worse(METRIC >= METRIC)` (or `<=`) fails only where the resamples show it "
                    "broken beyond the noise (a regression gate that equal models pass). "
                    "A metric's model may be `tagged(\"NAME\")`: the same target in the build named "
                    "with `formula tag NAME FORMULA` (`perplexity(tagged(\"v1\"), data.holdout)`)."]
        if schema.sub_blocks:
            out += ["", "Also: free-form sub-blocks " + ", ".join(f"`{s} {{ ... }}`" for s in schema.sub_blocks)
                    + " holding literal fields."]
        out.append("")
    out += ["## Functions", "", "| call | arguments | what it is |", "|---|---|---|"]
    for name, func in sorted({**funcs, **METRICS, **GATE_TESTS, TAGGED.name: TAGGED}.items()):
        args = ", ".join(("" if p.positional else "") + p.name + ("" if p.required else "?")
                         for p in func.params)
        out.append(f"| `{name}({args})` | " + "; ".join(
            f"`{p.name}`: {type_text(p.type)}" + (f" = `{p.default}`" if p.default not in (None, ()) else "")
            for p in func.params) + f" | {func.doc} |")
    out += ["", "`?` marks an optional argument. Positional arguments come first, in this order.", "",
            "## Session fields in conditions", "", "| field | type |", "|---|---|"]
    out += [f"| `{k}` | {v.__name__} |" for k, v in METADATA_FIELDS.items()]
    out += ["", "## Var types", "", ", ".join(f"`{k}`" for k in VAR_TYPES)]
    for fmt in FORMATS.values():
        out += ["", f"## Quantization types: `{fmt.name}`", "", f"{fmt.doc[0].upper() + fmt.doc[1:]}.", "",
                "| type | row length it needs | needs an importance matrix |", "|---|---|---|"]
        out += [f"| `{q}` | {x.row if x.row > 1 else '—'} | {'yes (refused)' if x.imatrix else 'no'} |"
                for q, x in fmt.quants.items()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")

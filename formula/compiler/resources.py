"""`resources { ... }` inside a stage: what its train step asks of the machine that runs it.

```
stage sft {
  ...
  resources {
    gpus      = 1
    memory    = 64 GiB
    time      = "4h"
    partition = "gpu"
  }
}
```

Cluster executors read it (`formula/runtime/cluster.py`: Slurm through submitit, Ray); a local
build ignores it. It is lowered into `StepSpec.resources`, never into the step's configuration:
where a step runs does not change its key.
"""

from __future__ import annotations

import re

from formula.contract import types as T

from . import ast
from .diagnostics import Label, did_you_mean, one_of
from .schema import FieldSpec

FIELDS = (
    FieldSpec("gpus", T.Int(0, 1024), default=0, doc="GPUs per node"),
    FieldSpec("cpus", T.Int(1, 4096), doc="CPU cores (default: the cluster's)"),
    FieldSpec("memory", T.Size("bytes"), doc="memory per node, such as `64 GiB` (default: the cluster's)"),
    FieldSpec("time", T.Str(), doc='a time limit: "90m", "4h", "1d12h", or Slurm\'s "HH:MM:SS" or '
              '"D-HH:MM:SS" (default: the partition\'s)'),
    FieldSpec("partition", T.Str(), doc="the Slurm partition (default: the cluster's)"),
)
BY_NAME = {f.name: f for f in FIELDS}
KINDS = ("stage",)  # the blocks that may hold one

_UNITS = {"d": 1440, "h": 60, "m": 1}


def minutes(text: str) -> int | None:
    """A time limit in whole minutes (rounded up), or None when it is not one."""
    text = text.strip()
    if re.fullmatch(r"(\d+[dhm])+", text):
        parts = re.findall(r"(\d+)([dhm])", text)
        if len({u for _, u in parts}) != len(parts):
            return None
        return sum(int(n) * _UNITS[u] for n, u in parts) or None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):([0-5]\d)(?::([0-5]\d))?", text)
    if m:
        days, hours, mins, secs = (int(g) if g else 0 for g in m.groups())
        total = days * 1440 + hours * 60 + mins + (1 if secs else 0)
        return total or None
    return None


def check(ck, member: ast.SubBlock, block, what: str) -> dict:
    """The sub-block's fields, checked; what the step asks for (only what is set)."""
    out: dict = {}
    seen: dict[str, ast.Field] = {}
    for inner in member.body:
        if not isinstance(inner, ast.Field):
            ck.err("misplaced-block", f"`resources` in {what} holds fields only", inner.span, "not a field",
                   help=f"resources fields: {one_of(BY_NAME)}")
            continue
        name = inner.name.name
        spec = BY_NAME.get(name)
        if spec is None:
            ck.err("unknown-field", f"unknown field `{name}` in the resources of {what}", inner.name.span,
                   "unknown field", help=did_you_mean(name, BY_NAME) or f"resources fields: {one_of(BY_NAME)}")
            continue
        if name in seen:
            ck.err("duplicate-field", f"`{name}` is set twice in the resources of {what}", inner.name.span,
                   "set again", labels=[Label(seen[name].name.span, "first set here")],
                   help="remove one of them")
            continue
        seen[name] = inner
        value = ck.ev.eval(inner.value, spec.type, block.scope)
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            continue  # INVALID: the evaluator said why
        if name == "time":
            value = minutes(str(value))
            if value is None:
                ck.err("bad-time", f"`time` in the resources of {what} is not a time limit",
                       inner.value.span, "not a duration",
                       help='write it like "90m", "4h", "1d12h", "02:00:00" or "1-12:00:00"')
                continue
        out[name] = value
    return out

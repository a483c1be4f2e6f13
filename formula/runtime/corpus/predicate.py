"""Conditions on session metadata, in the JSON form the compiler lowers them to:
`{"field", "op", "value"}`, `{"all": [...]}`, `{"any": [...]}`, `{"not": ...}`, `{"always": b}`."""

from __future__ import annotations

import operator

_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}


def matches(pred: dict | None, meta: dict) -> bool:
    if pred is None:
        return True
    if "all" in pred:
        return all(matches(p, meta) for p in pred["all"])
    if "any" in pred:
        return any(matches(p, meta) for p in pred["any"])
    if "not" in pred:
        return not matches(pred["not"], meta)
    if "always" in pred:
        return bool(pred["always"])
    value = meta.get(pred["field"])
    if value is None:
        return False  # a session without the field never matches, whatever the comparison
    if pred["op"] == "in":
        return value in pred["value"]
    try:
        return _OPS[pred["op"]](value, pred["value"])
    except TypeError:
        return False


def describe(pred: dict | None) -> str:
    if pred is None:
        return "true"
    if "all" in pred:
        return " and ".join(describe(p) for p in pred["all"])
    if "any" in pred:
        return "(" + " or ".join(describe(p) for p in pred["any"]) + ")"
    if "not" in pred:
        return f"not ({describe(pred['not'])})"
    if "always" in pred:
        return str(pred["always"]).lower()
    v = pred["value"]
    return f"{pred['field']} {pred['op']} {v!r}".replace("'", '"')

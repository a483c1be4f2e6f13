"""Conditions on session metadata (`role == "polecat" and turns >= 2`): the records the compiler
evaluates a condition to, the JSON form a step configuration carries, and how a step tests a
session's metadata with one.

    {"field", "op", "value"}   {"all": [...]}   {"any": [...]}   {"not": ...}   {"always": b}

The fields a condition may test are the compiler's (`formula/compiler/schema.py`,
`METADATA_FIELDS`); a session without the field never matches, whatever the comparison.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Cmp:
    field: str
    op: str  # == != < <= > >= in
    value: object


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Pred, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Pred, ...]


@dataclass(frozen=True)
class Negate:
    part: Pred


@dataclass(frozen=True)
class Always:
    value: bool


Pred = Union[Cmp, AllOf, AnyOf, Negate, Always]
PRED_TYPES = (Cmp, AllOf, AnyOf, Negate, Always)


def to_json(pred: Pred | None) -> dict[str, Any] | None:
    """The form a step configuration carries (and its key is computed from)."""
    if pred is None:
        return None
    if isinstance(pred, Cmp):
        return {"field": pred.field, "op": pred.op,
                "value": list(pred.value) if isinstance(pred.value, tuple) else pred.value}
    if isinstance(pred, AllOf):
        return {"all": [to_json(p) for p in pred.parts]}
    if isinstance(pred, AnyOf):
        return {"any": [to_json(p) for p in pred.parts]}
    if isinstance(pred, Negate):
        return {"not": to_json(pred.part)}
    return {"always": pred.value}


def from_json(data: dict[str, Any] | None) -> Pred | None:
    if data is None:
        return None
    if "all" in data:
        return AllOf(tuple(_part(p) for p in data["all"]))
    if "any" in data:
        return AnyOf(tuple(_part(p) for p in data["any"]))
    if "not" in data:
        return Negate(_part(data["not"]))
    if "always" in data:
        return Always(bool(data["always"]))
    value = data["value"]
    return Cmp(data["field"], data["op"], tuple(value) if isinstance(value, list) else value)


def _part(data: dict[str, Any]) -> Pred:
    pred = from_json(data)
    assert pred is not None
    return pred


_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}


def matches(pred: Pred | None, meta: dict[str, Any]) -> bool:
    if pred is None:
        return True
    if isinstance(pred, AllOf):
        return all(matches(p, meta) for p in pred.parts)
    if isinstance(pred, AnyOf):
        return any(matches(p, meta) for p in pred.parts)
    if isinstance(pred, Negate):
        return not matches(pred.part, meta)
    if isinstance(pred, Always):
        return bool(pred.value)
    value = meta.get(pred.field)
    if value is None:
        return False  # a session without the field never matches, whatever the comparison
    if pred.op == "in":
        return value in pred.value  # type: ignore[operator]
    try:
        return bool(_OPS[pred.op](value, pred.value))  # type: ignore[arg-type]  # TypeError below
    except TypeError:
        return False


def describe(pred: Pred | None) -> str:
    if pred is None:
        return "true"
    if isinstance(pred, AllOf):
        return " and ".join(describe(p) for p in pred.parts)
    if isinstance(pred, AnyOf):
        return "(" + " or ".join(describe(p) for p in pred.parts) + ")"
    if isinstance(pred, Negate):
        return f"not ({describe(pred.part)})"
    if isinstance(pred, Always):
        return str(pred.value).lower()
    v = list(pred.value) if isinstance(pred.value, tuple) else pred.value
    return f"{pred.field} {pred.op} {v!r}".replace("'", '"')

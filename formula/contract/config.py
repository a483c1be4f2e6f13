"""How a step configuration is declared, written and read back.

A step configuration is a frozen dataclass (`formula/contract/steps.py`; a training method's
options are one too, `formula/methods/`). A field that a formula sets is declared with
`setting(default, type, doc)`: its default, its type (with bounds) and its documentation live
there and nowhere else; the compiler's schema reads them, and so does the reference.

A record that is one member of a union (a model's source, an adapter, a corpus source) names
itself with an explicit `TAG`, written as `"type"` in the configuration. Tags are constants,
not class names: renaming a class changes no configuration and so no step key. (They are spelt
as they were when they were derived from the plan's class names, `"lora_plan"` included, so
that the keys of steps already in a store did not change when they became constants.)

`encode(record)` is the plain JSON-able dict the build writes as the step's Hydra YAML and keys
the step by; `decode(cls, data)` reads such a dict back into the dataclass, on the step's side.
"""

from __future__ import annotations

import dataclasses
import types as pytypes
import typing
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from .conditions import PRED_TYPES, from_json, to_json
from .types import Type

SETTING = "formula.setting"
OMIT = "formula.omit"  # metadata: leave the key out of the configuration when it holds this value
FLATTEN = "formula.flatten"  # metadata: a nested record whose fields are written beside its owner's


@dataclass(frozen=True)
class Setting:
    """What the formula language knows about a configuration field."""

    type: Type
    doc: str = ""


def setting(default: Any, type: Type, doc: str = "", *, omit: bool = False) -> Any:
    """A configuration field that a formula sets: its default, type and documentation. With
    `omit`, it is written only when it differs from its default (a setting added later leaves
    the keys of steps that do not set it as they were)."""
    return dataclasses.field(default=default, metadata={SETTING: Setting(type, doc),
                                                        **({OMIT: default} if omit else {})})


def optional_key(default: Any) -> Any:
    """A field written only when it differs from its default (keys of steps that never set it
    stay as they were)."""
    return dataclasses.field(default=default, metadata={OMIT: default})


def settings_of(cls: type) -> tuple[tuple[dataclasses.Field[Any], Setting], ...]:
    """The fields of a configuration dataclass that a formula sets, in declaration order."""
    return tuple((f, f.metadata[SETTING]) for f in dataclasses.fields(cls) if SETTING in f.metadata)


def default_of(cls: type, name: str) -> Any:
    """The default of one field (the only place it is written)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


# --- writing ------------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """A configuration record as plain data: dicts, lists, strings, numbers, booleans, None."""
    if isinstance(value, PRED_TYPES):
        return to_json(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        tag = getattr(value, "TAG", None)
        if tag is not None:
            out["type"] = tag
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if OMIT in f.metadata and v == f.metadata[OMIT]:
                continue
            if f.metadata.get(FLATTEN):
                nested = encode(v) if v is not None else {}
                out.update({k: x for k, x in nested.items() if k != "type"})
                continue
            out[f.name] = encode(v)
        return out
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


# --- reading ------------------------------------------------------------------------------------

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that does not fit its dataclass: a bug in whoever wrote it."""


def decode(cls: type[T], data: Any, **nested: type) -> T:
    """Read a configuration dict into `cls`. Unknown keys are refused, missing ones take their
    defaults. A field marked FLATTEN reads the keys no other field claims, into the class given
    for it in `nested` (a training method's options)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    flat = [f for f in fields.values() if f.metadata.get(FLATTEN)]
    rest = {k: v for k, v in data.items() if k not in fields and k != "type"}
    if rest and not flat:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(rest)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if f.metadata.get(FLATTEN):
            kind = nested.get(name)
            if kind is None:
                raise ConfigError(f"{cls.__name__}.{name}: the class of its fields was not given")
            kwargs[name] = decode(kind, rest)
        elif name in data:
            kwargs[name] = _value(hints[name], data[name], f"{cls.__name__}.{name}")
    return cls(**kwargs)


def _value(tp: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, pytypes.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if any(m in PRED_TYPES for m in members):
            return from_json(value)
        tagged = {getattr(m, "TAG", None): m for m in members if isinstance(m, type) and dataclasses.is_dataclass(m)}
        if isinstance(value, dict) and tagged:
            kind = tagged.get(value.get("type"))
            if kind is None:
                raise ConfigError(f"{where}: type {value.get('type')!r} is not one of {sorted(filter(None, tagged))}")
            return decode(kind, value)
        if len(members) == 1:
            return _value(members[0], value, where)
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_value(item, v, where) for v in value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return decode(tp, value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value

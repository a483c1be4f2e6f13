"""The types a field, a function parameter or a var can have.

A type is a value: the compiler's evaluator (`formula/compiler/evaluate.py`) reads it to decide
how an expression is checked and what it evaluates to, the schema (`formula/compiler/schema.py`)
and the settings of the step configurations (`formula/contract/steps.py`, the training methods)
declare their fields with it, and `docs/gen_reference.py` describes it. Plain data, no imports.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Type:
    @property
    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Str(Type):
    @property
    def describe(self) -> str:
        return "a string"


@dataclass(frozen=True)
class Bool(Type):
    @property
    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Number(Type):
    """An int or a float within bounds; `integer` refuses fractions."""

    integer: bool = False
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    @property
    def describe(self) -> str:
        return "an integer" if self.integer else "a number"

    def bounds_text(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}")
        return " and ".join(parts)

    def in_bounds(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return False
        return True


def Int(lo: float | None = None, hi: float | None = None) -> Number:
    return Number(integer=True, lo=lo, hi=hi)


def Float(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False) -> Number:
    return Number(integer=False, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


@dataclass(frozen=True)
class Fraction(Type):
    """A share: `5%` or `0.05`, evaluated to a float in [lo, hi]."""

    lo: float = 0.0
    hi: float = 1.0
    hi_open: bool = False
    lo_open: bool = False

    @property
    def describe(self) -> str:
        return "a percentage"

    def bounds_text(self) -> str:
        lo = f"{'above' if self.lo_open else 'at least'} {_pct(self.lo)}"
        hi = f"{'below' if self.hi_open else 'at most'} {_pct(self.hi)}"
        return f"{lo} and {hi}"

    def in_bounds(self, v: float) -> bool:
        if v < self.lo or (self.lo_open and v == self.lo):
            return False
        if v > self.hi or (self.hi_open and v == self.hi):
            return False
        return True


SIZE_UNITS = {
    "tokens": ("tokens", 1),
    "KiB": ("bytes", 1024), "MiB": ("bytes", 1024**2), "GiB": ("bytes", 1024**3),
    "TiB": ("bytes", 1024**4), "KB": ("bytes", 1000), "MB": ("bytes", 1000**2),
    "GB": ("bytes", 1000**3), "TB": ("bytes", 1000**4),
}


@dataclass(frozen=True)
class Size(Type):
    """`4096 tokens` or `512 MiB`, evaluated to an int count of the dimension's base unit."""

    dimension: str  # "tokens" or "bytes"
    lo: int = 1

    @property
    def describe(self) -> str:
        return "a token count such as `4096 tokens`" if self.dimension == "tokens" else \
            "a size such as `512 MiB`"


@dataclass(frozen=True)
class Symbol(Type):
    """One of a fixed set of bare names (`chatml`, `sft`, `q4_k_m`)."""

    choices: tuple[str, ...]
    what: str = "value"
    open: bool = False  # any name is accepted (module names for LoRA targets)

    @property
    def describe(self) -> str:
        return f"a {self.what}"


@dataclass(frozen=True)
class ListOf(Type):
    item: Type
    min_len: int = 0

    @property
    def describe(self) -> str:
        return f"a list of {self.item.describe.removeprefix('a ').removeprefix('an ')}s"


@dataclass(frozen=True)
class Ref(Type):
    """A reference to a block of one of `kinds`, optionally with a member (`sessions.holdout`)."""

    kinds: tuple[str, ...]

    @property
    def describe(self) -> str:
        return " or ".join(self.kinds)


@dataclass(frozen=True)
class DataRef(Type):
    """Training data: a corpus (optionally `where`-filtered, `.train`/`.holdout`) or pairs."""

    @property
    def describe(self) -> str:
        return "a corpus or preference pairs"


@dataclass(frozen=True)
class Target(Type):
    """What an eval or a metric runs on: a model, stage, assembled model or export output."""

    @property
    def describe(self) -> str:
        return "a model, stage, assemble or export output"


@dataclass(frozen=True)
class Predicate(Type):
    """A filter over session metadata (`role == "polecat" and turns >= 2`)."""

    @property
    def describe(self) -> str:
        return "a condition"


@dataclass(frozen=True)
class Metric(Type):
    @property
    def describe(self) -> str:
        return "a metric"


@dataclass(frozen=True)
class Param:
    name: str
    type: Type
    required: bool = False
    default: object = None
    positional: bool = False  # may also be given by position (in declaration order)
    doc: str = ""


@dataclass(frozen=True)
class Func(Type):
    """A constructor call such as `hub(id, revision = "main")` or `lora(r = 16)`."""

    name: str
    params: tuple[Param, ...]
    doc: str = ""

    @property
    def describe(self) -> str:
        return f"`{self.name}(...)`"

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


@dataclass(frozen=True)
class OneOf(Type):
    """Alternatives: symbols and/or constructor calls (`full` or `lora(...)`)."""

    options: tuple[Type, ...]

    @property
    def describe(self) -> str:
        parts: list[str] = []
        for o in self.options:
            if isinstance(o, Symbol):
                parts.extend(f"`{c}`" for c in o.choices)
            else:
                parts.append(o.describe)
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]

    def funcs(self) -> dict[str, Func]:
        return {o.name: o for o in self.options if isinstance(o, Func)}

    def symbols(self) -> tuple[str, ...]:
        return tuple(c for o in self.options if isinstance(o, Symbol) for c in o.choices)


@dataclass(frozen=True)
class Any_(Type):
    """Free metadata: any literal."""

    @property
    def describe(self) -> str:
        return "a literal value"


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _pct(v: float) -> str:
    return f"{_fmt(round(v * 100, 6))}%"

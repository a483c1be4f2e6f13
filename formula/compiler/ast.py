"""The formula AST: frozen, slotted nodes with tuple children, each carrying its source span.

The Lark tree never leaves `parse.py`; everything after it works on these nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .source import Source, Span


@dataclass(frozen=True, slots=True)
class Ident:
    name: str
    span: Span


# --- expressions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Number:
    value: int | float
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class String:
    value: str
    raw: str
    span: Span


@dataclass(frozen=True, slots=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True, slots=True)
class Percent:
    """`5%`: `value` is the number as written (5), not the fraction."""

    value: int | float
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Size:
    """`4096 tokens`, `512 MiB`: a number with a unit, checked later."""

    value: int | float
    text: str
    unit: Ident
    span: Span


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    span: Span


@dataclass(frozen=True, slots=True)
class Attr:
    obj: Expr
    attr: Ident
    span: Span


@dataclass(frozen=True, slots=True)
class KwArg:
    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    func: Expr
    args: tuple[Expr, ...]
    kwargs: tuple[KwArg, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class BinOp:
    """Arithmetic: `+ - * /`."""

    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Compare:
    """`== != < <= > >=` and `in`."""

    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class BoolOp:
    """`and`, `or`."""

    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Where:
    """`sessions where outcome == "merged"`: a filtered view of a corpus."""

    base: Expr
    cond: Expr
    span: Span


Expr = Union[Number, String, Bool, Percent, Size, ListExpr, Name, Attr, Call, BinOp, Compare,
             BoolOp, Not, Neg, Where]


# --- block members and items -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Check:
    expr: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class SubBlock:
    name: Ident
    body: tuple[Member, ...]
    span: Span


Member = Union[Field, Check, SubBlock]


@dataclass(frozen=True, slots=True)
class Block:
    """`stage sft { ... }`; the header `formula polecat { ... }` is a block of kind `formula`."""

    kind: Ident
    name: Ident
    body: tuple[Member, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class VarDecl:
    name: Ident
    type: Ident
    default: Expr | None
    required: bool
    doc: String | None
    enum: ListExpr | None
    pattern: String | None
    span: Span


@dataclass(frozen=True, slots=True)
class Use:
    path: String
    alias: Ident
    args: tuple[Member, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Extends:
    path: String
    span: Span


@dataclass(frozen=True, slots=True)
class Override:
    """`stage.sft.lr = 1e-4` at top level: sets one field of an inherited block or a var."""

    target: tuple[Ident, ...]
    value: Expr
    span: Span


Item = Union[Block, VarDecl, Use, Extends, Override]


@dataclass(frozen=True, slots=True)
class Comment:
    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class Module:
    source: Source
    items: tuple[Item, ...]
    comments: tuple[Comment, ...]
    span: Span


"""What a block kind's plan builder gets from the checker: the block's checked fields, and the
checker's services (messages, paths, other blocks)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from .. import ast, plan
from ..diagnostics import Diagnostic
from ..evaluate import INVALID, Evaluator
from ..resolve import BlockDef, Program
from ..source import Span


@dataclass
class Checked:
    """One block after its fields were checked: values (defaults filled in), the field nodes as
    written, and its `check` lines."""

    block: BlockDef
    values: dict[str, Any]
    nodes: dict[str, ast.Field]
    gates: list[tuple[tuple[Any, str, Any, float | None, str], ast.Check]]  # left, op, right, confidence, test


class Checker(Protocol):
    program: Program  # its root is the formula being checked or built (its lock file is beside it)
    checked: dict[int, Checked]
    ev: Evaluator
    diags: list[Diagnostic]  # warnings are appended here as they are

    def err(self, code: str, message: str, span: Span | None, label: str = "", **kw: Any) -> None: ...

    def path(self, block: BlockDef, path: str) -> str:
        """A path written in a block, absolute (relative to the block's formula)."""

    def origin(self, block: BlockDef) -> plan.Origin: ...

    def holdout_exists(self, view: plan.DataView, block: BlockDef, at: ast.Expr) -> bool:
        """False (and says so) when a view names the holdout of a corpus that holds nothing out."""

    def root_model(self, block: BlockDef) -> BlockDef | None:
        """The model block at the root of a stage, assemble or export chain."""


def arg_span(call: Span, name: str) -> Span | None:
    """The span of `name = value` inside a call, for diagnostics about one argument."""
    text = call.source.text[call.start:call.end]
    found = re.search(rf'\b{name}\s*=\s*("[^"\n]*"|[\w.]+)', text)
    return call.source.span(call.start + found.start(), call.start + found.end()) if found else None


def has_invalid(values: dict[str, Any]) -> bool:
    return any(x is INVALID for x in values.values())

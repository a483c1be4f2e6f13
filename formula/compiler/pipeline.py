"""The compiler's passes, in order. Each is a pure function of the previous one's output.

    overrides ─┐
    text ── parse ── resolve ── check ──► Plan ── lower ──► step configs and graph
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from .check import check
from .diagnostics import Diagnostic, error
from .overrides import parse_overrides
from .parse import PARSE_CODES
from .plan import Plan
from .resolve import Reader, read_file, resolve


@dataclass(frozen=True)
class Compiled:
    plan: Plan | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return self.plan is not None and not any(d.is_error for d in self.diagnostics)


def unique(diags: Iterable[Diagnostic]) -> tuple[Diagnostic, ...]:
    """Each diagnostic once, in first-seen order (a library reached twice reports once)."""
    seen, out = set(), []
    for d in diags:
        key = (d.code, d.message, d.span.source.path if d.span else None,
               d.span.start if d.span else None)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return tuple(out)


def compile_formula(path: str, overrides: Sequence[str] = (), read: Reader = read_file) -> Compiled:
    """Every diagnostic of one formula; a crash of the compiler itself is one more diagnostic
    (set FORMULA_DEBUG=1 to see its traceback instead)."""
    try:
        return _compile(path, overrides, read)
    except (RecursionError, MemoryError, Exception) as exc:  # noqa: BLE001 - reported, not hidden
        if os.environ.get("FORMULA_DEBUG"):
            raise
        return Compiled(None, (_internal_error(path, exc),))


def _internal_error(path: str, exc: BaseException) -> Diagnostic:
    from .source import Source

    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" ({os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno})" if tb else ""
    return error("internal-error", f"formula failed on this file: {type(exc).__name__}: "
                 f"{str(exc)[:200]}{where}", Source(path, "").span(0, 0), "",
                 help="this is a bug in formula, not in the file: please report it with the file; "
                      "FORMULA_DEBUG=1 shows the traceback")


def _compile(path: str, overrides: Sequence[str], read: Reader) -> Compiled:
    diagnostics: list[Diagnostic] = []
    cli, diags = parse_overrides(list(overrides))
    diagnostics += diags
    program, diags = resolve(path, cli, read)
    diagnostics += diags
    if program is None or any(d.code in PARSE_CODES for d in diagnostics):
        # Checking what is left of a file with syntax errors only reports their echoes.
        return Compiled(None, unique(diagnostics))
    plan, diags = check(program)
    diagnostics += diags
    if any(d.is_error for d in diagnostics):
        plan = None
    return Compiled(plan, unique(diagnostics))

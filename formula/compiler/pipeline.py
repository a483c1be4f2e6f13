"""The compiler's passes, in order. Each is a pure function of the previous one's output.

    overrides ─┐
    text ── parse ── resolve ── check ──► Plan ── lower ──► step configs and graph
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .check import check
from .diagnostics import Diagnostic
from .overrides import parse_overrides
from .plan import Plan
from .resolve import Reader, read_file, resolve


@dataclass(frozen=True)
class Compiled:
    plan: Plan | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return self.plan is not None and not any(d.is_error for d in self.diagnostics)


def _dedupe(diags: list[Diagnostic]) -> tuple[Diagnostic, ...]:
    seen, out = set(), []
    for d in diags:
        key = (d.code, d.message, d.span.source.path if d.span else None,
               d.span.start if d.span else None)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return tuple(out)


def compile_formula(path: str, overrides: Sequence[str] = (), read: Reader = read_file) -> Compiled:
    diagnostics: list[Diagnostic] = []
    cli, diags = parse_overrides(list(overrides))
    diagnostics += diags
    program, diags = resolve(path, cli, read)
    diagnostics += diags
    if program is None or any(d.code == "syntax" for d in diagnostics):
        # Checking what is left of a file with syntax errors only reports their echoes.
        return Compiled(None, _dedupe(diagnostics))
    plan, diags = check(program)
    diagnostics += diags
    if any(d.is_error for d in diagnostics):
        plan = None
    return Compiled(plan, _dedupe(diagnostics))

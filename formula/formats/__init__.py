"""Export formats: one module each in this folder, found here by name.

A format module defines `FORMAT = ExportFormat(...)`: its name (what `format =` says, and the
kind of its steps, `<name>.<export>.<quant>`), the file each of its steps writes, its quant
types and the rules the checker applies to them, and how `formula serve` serves the file. What
writes the file and reads it back for evals is the format's runtime module,
`formula/runtime/formats/<name>.py` (the step itself). So adding a format is two modules: this
description and that step.

The compiler's schema, checker and lowering read the registry (`FORMATS`); so do the runtime's
step lookup and evals, and `formula serve`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Its modules are found at run time: a step that imports this package has all of them as code.
DISCOVERED = True


@dataclass(frozen=True)
class Quant:
    row: int = 1  # the row length the type needs (1: any)
    imatrix: bool = False  # needs an importance matrix


@dataclass(frozen=True)
class Problem:
    """Something the checker reports about one quant of an export block."""

    code: str
    quant: str
    message: str
    label: str
    help: str
    at_model: bool = False  # also point at the model whose shapes it is about


# A format's own rules: (quants, the model's name and its shapes when made by init) → problems.
Rules = Callable[[tuple[str, ...], str, "dict[str, int] | None"], "list[Problem]"]


def no_rules(quants: tuple[str, ...], model: str, shapes: dict[str, int] | None) -> list[Problem]:
    return []


@dataclass(frozen=True)
class ExportFormat:
    name: str
    doc: str
    file: str  # what each step writes into its output folder, e.g. "model.gguf"
    quants: dict[str, Quant]
    rules: Rules = no_rules
    # The model families (transformers' `model_type`) its converter writes; None: any. The
    # checker refuses an export of another family where the model's family is known.
    architectures: tuple[str, ...] | None = None
    serve_first: tuple[str, ...] = ()  # the quants `formula serve` prefers, in order
    # The command that serves the file over the OpenAI API, or None when it cannot be served:
    # (file, host, port, model name, backend, program) → argv; the backend is one of
    # serve_backends, and program(name) the path of a native program the runtime finds or builds
    # (this layer builds nothing).
    serve: Callable[[Path, str, int, str, str, Callable[[str], Path]], list[str]] | None = None
    serve_backends: tuple[str, ...] = ()  # the servers it can run, the default first


def _discover() -> dict[str, ExportFormat]:
    found: dict[str, ExportFormat] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        fmt = getattr(module, "FORMAT", None)
        if not isinstance(fmt, ExportFormat):
            raise TypeError(f"{module.__name__} defines no FORMAT = ExportFormat(...)")
        found[fmt.name] = fmt
    return found


FORMATS: dict[str, ExportFormat] = _discover()


def all_quants() -> tuple[str, ...]:
    """Every format's quant names, in declaration order, once each."""
    return tuple(dict.fromkeys(q for f in FORMATS.values() for q in f.quants))

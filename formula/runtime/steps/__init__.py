"""Step implementations, one module per kind; an export format's step is its runtime module in
`formula/runtime/formats/` (`gguf` is one). `FORMULA_STEPS=pkg` points the build at another
package with modules of the same names (tests use cheap stand-ins this way)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from formula.contract.config import decode

C = TypeVar("C")
FORMATS_FOLDER = Path(__file__).resolve().parent.parent / "formats"


def module_for(kind: str) -> str:
    package = os.environ.get("FORMULA_STEPS")
    if package:
        return f"{package}.{kind}"
    if (FORMATS_FOLDER / f"{kind}.py").is_file():
        return f"formula.runtime.formats.{kind}"
    return f"formula.runtime.steps.{kind}"


def typed(config_class: type[C], run: Callable[[C, dict[str, Path], Path, Path], None]
          ) -> Callable[[Any, dict[str, Path], Path, Path], None]:
    """A step's `run` for `step_entry(None, ...)`: the configuration the build wrote, read into
    the step kind's record (`formula/contract/steps.py`)."""

    def entry(config: Any, inputs: dict[str, Path], output: Path, work: Path) -> None:
        run(decode(config_class, config), inputs, output, work)

    return entry

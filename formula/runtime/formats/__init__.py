"""Each export format's runtime side, one module per format (`formula/formats/<name>.py` describes
it): the step that writes its files (kind `<name>`, `python -m formula.runtime.formats.<name>`)
and `open_model(path)`, how the eval step measures one of those files."""

from __future__ import annotations

import importlib
from types import ModuleType

# Its modules are found at run time: a step that imports this package (eval) has all of them
# as code (formula/runtime/codehash.py), so editing how a format is read reruns the evals.
DISCOVERED = True


def module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")

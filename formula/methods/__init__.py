"""Training methods: one module each in this folder, found here by name.

A method module defines `METHOD = Method(...)`: its name (what `method =` says), the data it
takes (`SESSIONS`, `PAIRS` or `LABELED`), its own fields (an `Options` dataclass declared with
`setting(...)`: type, default and documentation in one place), and two functions the train step
calls: `dataset(run)` reads the stage's data folder, `trainer(run, data)` builds the trl trainer.

The compiler's schema, checker and lowering read the registry (`METHODS`) for names, data and
fields; the train step reads it for the dataset and the trainer. Nothing else knows a method by
name, so adding one is adding a module. Modules import only `formula.contract` at the top; the
ML libraries are imported inside `dataset` and `trainer`, so `formula check` stays light.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, Protocol

from formula.contract.config import Setting, settings_of
from formula.contract.steps import StageSettings, TrainConfig

# Its modules are found at run time: a step that imports this package has all of them as code
# (formula/runtime/codehash.py), so editing a method reruns the stages it may train.
DISCOVERED = True


@dataclass(frozen=True)
class DataKind:
    """What a stage's `data` must be for a method: the block kind it names (a corpus, whose
    sessions reach the train step tokenized, or a pairs block, whose folder does), and how
    messages say it."""

    name: str
    block: str  # corpus or pairs
    what: str  # "a dpo stage trains on <what>"
    label: str  # under a `data =` that names the wrong kind of block


SESSIONS = DataKind("sessions", "corpus", "a corpus", "not a corpus")
PAIRS = DataKind("pairs", "pairs", "preference pairs", "not preference pairs")
LABELED = DataKind("labeled", "pairs", "sessions labeled desirable and undesirable (a pairs block)",
                   "not a pairs block")


class TrainRun(Protocol):
    """What the train step hands a method (formula/runtime/steps/train.py)."""

    config: TrainConfig
    options: Any  # the method's Options
    data_dir: Path  # the data input: a tokenized corpus, or a pairs folder
    model: Any
    tokenizer: Any
    peft_config: Any
    callbacks: list[Any]

    def args(self, config_class: type, **method_args: Any) -> Any:
        """The trl config of class `config_class`: the stage's shared settings, plus these."""

    def fail(self, message: str) -> NoReturn:
        """End the step with a message for the user."""

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """The rows of a JSON-lines file in the data folder."""


@dataclass(frozen=True)
class Method:
    name: str
    data: DataKind
    doc: str
    Options: type  # a frozen dataclass of `setting(...)` fields; () fields for none
    dataset: Callable[[TrainRun], Any]
    trainer: Callable[[TrainRun, Any], Any]
    # Whether the stage's data is tokenized packed (`packing = true`): its own packed artifact.
    packs: Callable[[Any], bool] = lambda options: False
    # Whether the chat template must mark assistant turns for this stage (loss on them only).
    masks: Callable[[Any], bool] = lambda options: True

    def settings(self) -> tuple[tuple[dataclasses.Field[Any], Setting], ...]:
        return settings_of(self.Options)

    def options(self, values: dict[str, Any]) -> Any:
        """The Options from checked field values (missing ones take their defaults)."""
        names = {f.name for f in dataclasses.fields(self.Options)}
        return self.Options(**{k: v for k, v in values.items() if k in names and v is not None})


def _discover() -> dict[str, Method]:
    found: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        method = getattr(module, "METHOD", None)
        if not isinstance(method, Method):
            raise TypeError(f"{module.__name__} defines no METHOD = Method(...)")
        if method.name in found:
            raise TypeError(f"two methods are called {method.name!r}")
        shared = {f.name for f in dataclasses.fields(StageSettings)} | {
            f.name for f in dataclasses.fields(TrainConfig)}
        clash = shared & {f.name for f in dataclasses.fields(method.Options)}
        if clash:
            raise TypeError(f"method {method.name!r} redeclares stage fields {sorted(clash)}")
        found[method.name] = method
    return found


METHODS: dict[str, Method] = _discover()


def method_fields() -> dict[str, tuple[Setting, dict[str, Any]]]:
    """Each method field name → (its setting, its default for each method that has it), in the
    order the methods declare them. A name two methods share must have one type; its doc is the
    first method's."""
    out: dict[str, tuple[Setting, dict[str, Any]]] = {}
    for method in METHODS.values():
        for f, s in method.settings():
            if f.name in out:
                first, defaults = out[f.name]
                if first.type != s.type:
                    raise TypeError(f"methods {next(iter(defaults))!r} and {method.name!r} give "
                                    f"`{f.name}` different types")
                defaults[method.name] = f.default
            else:
                out[f.name] = (s, {method.name: f.default})
    return out

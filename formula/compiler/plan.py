"""The typed plan: what a formula means, with every reference bound and every value checked.

This is the compiler's IR between checking and lowering. Values are plain Python (str, int,
float, bool, tuples), the contract's records (`formula/contract/`) or the frozen records below;
nothing here points back into the AST except `Origin`, which keeps the file position for
messages at build time. Records with more than a few fields take keyword arguments only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

# Conditions, model and tokenizer sources, templates, transcript sources, adapters and data views
# are the contract's records: the plan holds them and the lowering hands them to the step
# configurations as they are.
from formula.contract.conditions import AllOf, Always, AnyOf, Cmp, Negate, Pred  # noqa: F401
from formula.contract.steps import (DataView, FileTemplate, GastownSource, HubSource,  # noqa: F401
                                    InitSource, Lora, ModelSource, NamedTemplate, OwnTokenizer,
                                    PathSource, StageSettings, Template, TokenizerSource,
                                    TrainedTokenizer, TranscriptSource)


@dataclass(frozen=True)
class Origin:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# --- models -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelPlan:
    name: str
    source: ModelSource
    tokenizer: TokenizerSource
    template: Template
    dtype: str
    origin: Origin
    allow_pickle: bool = False


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CorpusPlan:
    name: str
    sources: tuple[TranscriptSource | GastownSource, ...]
    where: Pred | None
    scrub: tuple[str, ...]
    dedup: str  # exact, none, near
    dedup_threshold: float
    holdout: float
    max_len: int | None
    truncation: str
    min_turns: int
    max_turns: int | None
    max_repeats: int
    on_error: str
    max_dropped: float
    origin: Origin


@dataclass(frozen=True, kw_only=True)
class PairsPlan:
    name: str
    data: DataView | None
    source: TranscriptSource | None
    chosen: Pred | None
    rejected: Pred | None
    match: str
    origin: Origin


# --- training and outputs ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StagePlan:
    name: str
    method: str  # a name in formula.methods.METHODS
    model: str  # a model or an earlier stage
    base_model: str  # the model at the root of the stage chain
    data: DataView
    adapter: Lora | None  # None: full fine-tuning
    settings: StageSettings  # the fields every method shares
    options: object  # the method's own fields: an instance of its Options
    needs: tuple[str, ...]
    origin: Origin
    resources: dict = field(default_factory=dict)  # `resources { ... }`: not in the step's key


@dataclass(frozen=True, kw_only=True)
class AssemblePlan:
    name: str
    stage: str
    base_model: str  # the model at the root of the stage chain
    merge: bool
    dtype: str
    shard_size: int
    origin: Origin


@dataclass(frozen=True, kw_only=True)
class ExportPlan:
    name: str
    source: str  # an assemble or a model
    base_model: str  # the model whose tokenizer its files carry
    format: str  # a name in formula.formats.FORMATS
    quants: tuple[str, ...]
    origin: Origin


@dataclass(frozen=True)
class TargetRef:
    """What an eval measures: `kind` is model, stage, assemble or export (with a quant); with
    `tag`, that target's output in the build named so (`formula tag`), not this build's."""

    kind: str
    name: str
    quant: str | None = None
    tag: str | None = None

    def __str__(self) -> str:
        own = f"{self.name}.{self.quant}" if self.quant else self.name
        return f'tagged("{self.tag}", {own})' if self.tag else own


@dataclass(frozen=True)
class MetricCall:
    metric: str  # perplexity, eos_rate, prompts, next_action
    target: TargetRef | None  # None: the eval's `on`
    data: DataView | None
    args: tuple[tuple[str, object], ...]
    attr: str | None = None  # prompts(...).pass_rate


@dataclass(frozen=True)
class Const:
    value: float


@dataclass(frozen=True)
class Arith:
    op: str
    left: MetricExpr
    right: MetricExpr


MetricExpr = Union[MetricCall, Const, Arith]


@dataclass(frozen=True, kw_only=True)
class GatePlan:
    left: MetricExpr
    op: str
    right: MetricExpr
    text: str  # the check as written, for reports
    origin: Origin
    confidence: float | None = None  # significant(...), not_worse(...): the test's level
    test: str = "significant"  # which of them (schema.GATE_TESTS)


@dataclass(frozen=True, kw_only=True)
class EvalPlan:
    name: str
    on: TargetRef
    gates: tuple[GatePlan, ...]
    metrics: tuple[MetricExpr, ...]
    needs: tuple[str, ...]
    origin: Origin


@dataclass(frozen=True)
class VarValue:
    name: str
    type: str
    value: object
    doc: str


@dataclass(frozen=True)
class Plan:
    name: str
    description: str
    file: str
    vars: tuple[VarValue, ...]
    models: dict[str, ModelPlan] = field(default_factory=dict)
    corpora: dict[str, CorpusPlan] = field(default_factory=dict)
    pairs: dict[str, PairsPlan] = field(default_factory=dict)
    stages: dict[str, StagePlan] = field(default_factory=dict)
    assembles: dict[str, AssemblePlan] = field(default_factory=dict)
    exports: dict[str, ExportPlan] = field(default_factory=dict)
    evals: dict[str, EvalPlan] = field(default_factory=dict)

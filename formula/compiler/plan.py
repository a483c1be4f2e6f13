"""The typed plan: what a formula means, with every reference bound and every value checked.

This is the compiler's IR between checking and lowering. Values are plain Python (str, int,
float, bool, tuples) or the frozen records below; nothing here points back into the AST except
`Origin`, which keeps the file position for messages at build time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Origin:
    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# --- conditions over session metadata ---------------------------------------------------------


@dataclass(frozen=True)
class Cmp:
    field: str
    op: str  # == != < <= > >= in
    value: object


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Pred, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Pred, ...]


@dataclass(frozen=True)
class Negate:
    part: Pred


@dataclass(frozen=True)
class Always:
    value: bool


Pred = Union[Cmp, AllOf, AnyOf, Negate, Always]


# --- models -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    id: str
    revision: str


@dataclass(frozen=True)
class PathSource:
    dir: str  # absolute


@dataclass(frozen=True)
class InitSource:
    arch: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context: int
    seed: int


@dataclass(frozen=True)
class OwnTokenizer:
    pass


@dataclass(frozen=True)
class TrainedTokenizer:
    corpus: str
    vocab: int


ModelSource = Union[HubSource, PathSource, InitSource]
TokenizerSource = Union[OwnTokenizer, TrainedTokenizer, HubSource, PathSource]


@dataclass(frozen=True)
class NamedTemplate:
    name: str  # chatml, llama3, own


@dataclass(frozen=True)
class FileTemplate:
    path: str  # absolute


@dataclass(frozen=True)
class ModelPlan:
    name: str
    source: ModelSource
    tokenizer: TokenizerSource
    template: NamedTemplate | FileTemplate
    dtype: str
    origin: Origin


# --- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptSource:
    glob: str  # absolute pattern
    format: str
    meta: str  # transcript, sidecar, pattern
    meta_arg: str = ""
    subagents: bool = True
    branches: str = "final"
    thinking: str = "drop"


@dataclass(frozen=True)
class GastownSource:
    projects: str
    beads: str
    town: str
    outcomes: str = ""  # outcome rules file (absolute); "" for the shipped Gas Town rules
    subagents: bool = True
    branches: str = "final"
    thinking: str = "drop"


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class DataView:
    """A split of a corpus, optionally filtered further, or a pairs block."""

    kind: str  # "corpus" or "pairs"
    name: str
    split: str = "train"  # train, holdout (corpus only)
    where: Pred | None = None


@dataclass(frozen=True)
class PairsPlan:
    name: str
    data: DataView | None
    source: TranscriptSource | None
    chosen: Pred | None
    rejected: Pred | None
    match: str
    origin: Origin


# --- training and outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class LoraPlan:
    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    bias: str
    rslora: bool
    dora: bool


@dataclass(frozen=True)
class StagePlan:
    name: str
    method: str
    model: str  # a model or an earlier stage
    data: DataView
    adapter: LoraPlan | None  # None: full fine-tuning
    hyper: tuple[tuple[str, object], ...]  # every other field, resolved, sorted by name
    needs: tuple[str, ...]
    origin: Origin

    def get(self, key: str, default: object = None) -> object:
        return dict(self.hyper).get(key, default)


@dataclass(frozen=True)
class AssemblePlan:
    name: str
    stage: str
    merge: bool
    dtype: str
    shard_size: int
    origin: Origin


@dataclass(frozen=True)
class ExportPlan:
    name: str
    source: str  # an assemble or a model
    format: str
    quants: tuple[str, ...]
    origin: Origin


@dataclass(frozen=True)
class TargetRef:
    """What an eval measures: `kind` is model, stage, assemble or export (with a quant)."""

    kind: str
    name: str
    quant: str | None = None

    def __str__(self) -> str:
        return f"{self.name}.{self.quant}" if self.quant else self.name


@dataclass(frozen=True)
class MetricCall:
    metric: str  # perplexity, eos_rate, prompts
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


@dataclass(frozen=True)
class GatePlan:
    left: MetricExpr
    op: str
    right: MetricExpr
    text: str  # the check as written, for reports
    origin: Origin


@dataclass(frozen=True)
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

"""Each step kind's configuration: what the compiler's lowering builds and the step reads.

    corpus.C      CorpusConfig      load, scrub, filter and split a corpus
    tokenizer.M   TokenizerConfig   train a BPE tokenizer for a model made by init
    model.M       ModelConfig       make, fetch or read a base model
    tokenize.C.M  TokenizeConfig    a corpus with a model's tokenizer and template
    pairs.P       PairsConfig       preference pairs and labeled sessions
    train.S       TrainConfig       one training stage (its method's options beside the rest)
    assemble.A    AssembleConfig    a standalone model folder
    <format>.E.Q  ExportConfig      one exported file per variant (`gguf.E.Q`)
    eval.V        EvalConfig        metrics and gates

Defaults are written here once. A field that a formula sets under the same name is declared
with `setting(default, type, doc)` and the compiler's schema takes it from here; the records a
formula builds with a call (`hub(...)`, `lora(...)`, `gastown(...)`) carry the defaults of the
call's arguments. Each block-level configuration says which formula fields live elsewhere
(`ELSEWHERE`) and which of its own fields the formula does not set by name (`DERIVED`);
`tests/test_contract.py` fails when a formula field has no home here or the reverse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .conditions import Pred
from .config import FLATTEN, default_of, optional_key, setting
from .types import Bool, Fraction, Int, ListOf, Predicate, Size, Symbol, Float

# --- vocabularies -------------------------------------------------------------------------------

DTYPES = ("f32", "f16", "bf16")
SCRUB_KINDS = ("secrets", "pii", "emails", "phones", "ips", "home_paths")

# --- records a formula builds with a call -------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    TAG: ClassVar[str] = "hub_source"
    id: str
    revision: str = "main"
    # From the formula's lock file (formula/contract/hublock.py): the commit the revision was
    # pinned to and the files the model needs there, so a moved revision changes no key until
    # the pin moves. Empty where the formula has no lock entry yet.
    commit: str = optional_key("")
    files: tuple[str, ...] = optional_key(())
    # The lock's sha256 of the files the hub keeps in LFS (the weights), as `sha256sum` prints
    # them ("HEX  NAME"): the model step checks the downloaded bytes against them.
    sha256: tuple[str, ...] = optional_key(())


@dataclass(frozen=True)
class PathSource:
    TAG: ClassVar[str] = "path_source"
    dir: str  # absolute


@dataclass(frozen=True, kw_only=True)
class InitSource:
    TAG: ClassVar[str] = "init_source"
    arch: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    context: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class OwnTokenizer:
    TAG: ClassVar[str] = "own_tokenizer"


@dataclass(frozen=True)
class TrainedTokenizer:
    TAG: ClassVar[str] = "trained_tokenizer"
    corpus: str
    vocab: int


@dataclass(frozen=True)
class NamedTemplate:
    TAG: ClassVar[str] = "named_template"
    name: str  # chatml, llama3, own


@dataclass(frozen=True)
class FileTemplate:
    TAG: ClassVar[str] = "file_template"
    path: str  # absolute


ModelSource = HubSource | PathSource | InitSource
TokenizerSource = OwnTokenizer | TrainedTokenizer | HubSource | PathSource
Template = NamedTemplate | FileTemplate


@dataclass(frozen=True, kw_only=True)
class TranscriptSource:
    TAG: ClassVar[str] = "transcript_source"
    glob: str  # absolute pattern
    format: str = "claude_code"
    meta: str = "transcript"  # transcript, sidecar, pattern
    meta_arg: str = ""
    subagents: bool = True
    branches: str = "final"
    thinking: str = "drop"
    # Limits on input (docs/data.md): a line of a JSONL file (a text file: the file), and one
    # Claude Code transcript file in bytes and in events. Written only when changed.
    max_event: int = optional_key(16 << 20)
    max_session: int = optional_key(256 << 20)
    max_session_events: int = optional_key(200_000)
    input: str = optional_key("")  # the step input holding its files (corpus sources only)


@dataclass(frozen=True, kw_only=True)
class GastownSource:
    TAG: ClassVar[str] = "gastown_source"
    projects: str = "~/.claude/projects"
    beads: str
    town: str = "~/gt"  # matched against the agents' working directories, as written
    outcomes: str = ""  # outcome rules file (absolute); "" for the shipped Gas Town rules
    subagents: bool = default_of(TranscriptSource, "subagents")
    branches: str = default_of(TranscriptSource, "branches")
    thinking: str = default_of(TranscriptSource, "thinking")
    max_event: int = optional_key(default_of(TranscriptSource, "max_event"))
    max_session: int = optional_key(default_of(TranscriptSource, "max_session"))
    max_session_events: int = optional_key(default_of(TranscriptSource, "max_session_events"))
    input: str = optional_key("")


Source = TranscriptSource | GastownSource


@dataclass(frozen=True, kw_only=True)
class Lora:
    TAG: ClassVar[str] = "lora_plan"
    r: int = 16
    alpha: float | None = None  # None: 2 × r (the checker fills it in)
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    bias: str = "none"
    rslora: bool = False
    dora: bool = False


@dataclass(frozen=True)
class Full:
    TAG: ClassVar[str] = "full"


Adapter = Full | Lora


@dataclass(frozen=True)
class DataView:
    """A split of a corpus, optionally filtered further, or a pairs block."""

    TAG: ClassVar[str] = "data_view"
    kind: str  # "corpus" or "pairs"
    name: str
    split: str = "train"  # train, holdout (corpus only)
    where: Pred | None = None


# --- the step configurations --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    BLOCK: ClassVar[str] = "model"
    ELSEWHERE: ClassVar[dict[str, str]] = {"from": "source"}
    DERIVED: ClassVar[dict[str, str]] = {"name": "the block's name", "source": "`from`"}

    name: str = "model"
    source: ModelSource | None = None
    tokenizer: TokenizerSource | None = None
    template: Template | None = None  # the checker decides: own, or chatml for a model made by init
    dtype: str = setting("auto", Symbol(("auto",) + DTYPES, "dtype"), "dtype the weights are loaded in")
    allow_pickle: bool = setting(False, Bool(), "read pickle weights (`pytorch_model.bin`, `*.pt`) when the "
                                 "model has no safetensors; unpickling can run code", omit=True)


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    vocab: int = 512
    corpus: str = ""
    template: Template = NamedTemplate("chatml")


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    BLOCK: ClassVar[str] = "corpus"
    ELSEWHERE: ClassVar[dict[str, str]] = {"source": "sources"}
    DERIVED: ClassVar[dict[str, str]] = {
        "name": "the block's name", "sources": "`source`, one record per source with its input",
        "dedup_threshold": "the threshold of `dedup = near(...)`"}

    name: str = "corpus"
    sources: tuple[Source, ...] = ()
    where: Pred | None = setting(None, Predicate(), "keep sessions whose metadata matches")
    scrub: tuple[str, ...] = setting(("secrets", "pii"), ListOf(Symbol(SCRUB_KINDS, "scrub kind")),
                                     "what to replace with typed placeholders")
    dedup: str = "exact"  # exact, none, near
    dedup_threshold: float = 1.0
    holdout: float = setting(0.0, Fraction(0.0, 1.0, hi_open=True),
                             "share held out, chosen by a hash of the session id")
    max_len: int | None = setting(None, Size("tokens"),
                                  "examples longer than this many tokens are truncated or dropped")
    truncation: str = setting("end", Symbol(("end", "drop"), "truncation policy"),
                              "`end` keeps the first max_len tokens; `drop` drops the session")
    min_turns: int = setting(1, Int(1), "drop sessions with fewer turns")
    max_turns: int | None = setting(None, Int(1), "drop sessions with more turns")
    max_repeats: int = setting(3, Int(1), "drop sessions that repeat the same failing tool call this many times")
    on_error: str = setting("fail", Symbol(("fail", "skip"), "error policy"),
                            "a malformed line fails the build, or is counted and skipped")
    max_dropped: float = setting(1.0, Fraction(), "fail the build when filters drop more than this share")


@dataclass(frozen=True, kw_only=True)
class TokenizeConfig:
    corpus: str = ""
    model: str = ""
    max_len: int | None = default_of(CorpusConfig, "max_len")
    truncation: str = default_of(CorpusConfig, "truncation")
    pack_to: int | None = optional_key(None)  # pack examples into rows of at most this many tokens
    workers: int = optional_key(0)  # 0: one per core


@dataclass(frozen=True, kw_only=True)
class PairsConfig:
    BLOCK: ClassVar[str] = "pairs"
    ELSEWHERE: ClassVar[dict[str, str]] = {"from": "data"}
    DERIVED: ClassVar[dict[str, str]] = {"name": "the block's name", "data": "`from`",
                                         "require": "the data the stages trained on it take"}

    name: str = "pairs"
    data: DataView | None = None  # built from a corpus
    source: TranscriptSource | None = None  # or given pairs (format = pairs)
    chosen: Pred | None = setting(None, Predicate(), "sessions that are the chosen side")
    rejected: Pred | None = setting(None, Predicate(), "sessions that are the rejected side")
    match: str = setting("bead", Symbol(("bead", "prompt"), "match key"),
                         "pair sessions on the same bead, or with the same first prompt")
    # What must not come out empty: "pairs", or "labeled" when every stage that trains on it
    # takes labeled sessions (KTO-style methods need no pair).
    require: str = optional_key("pairs")


@dataclass(frozen=True, kw_only=True)
class StageSettings:
    """The stage fields every training method shares. A method's own fields are its options
    (`formula/methods/<name>.py`), written beside these in the step configuration."""

    epochs: float = setting(1, Float(0, 1000, lo_open=True))
    max_steps: int | None = setting(None, Int(1), "stop after this many optimizer steps")
    lr: float = setting(1e-4, Float(0, 1, lo_open=True), "peak learning rate")
    batch: int = setting(8, Int(1, 1 << 16), "examples per device and step")
    accumulate: int = setting(1, Int(1, 1 << 16), "gradient accumulation steps")
    seed: int = setting(0, Int(0, 2**32 - 1))
    warmup: float = setting(0.0, Fraction(0.0, 1.0, hi_open=True), "share of steps spent warming up")
    scheduler: str = setting("linear", Symbol(("constant", "linear", "cosine"), "scheduler"))
    weight_decay: float = setting(0.0, Float(0, 1))
    max_grad_norm: float = setting(1.0, Float(0, lo_open=True))
    max_len: int | None = setting(None, Size("tokens"), "sequence length (default: the corpus's)")
    save_every: int = setting(50, Int(1), "checkpoint every N steps")
    log_every: int = setting(5, Int(1), "log metrics every N steps")
    processes: int = setting(1, Int(1, 1024), "data-parallel processes (on each node)")
    nodes: int = setting(1, Int(1, 1024), "machines the stage trains on, `processes` on each: torchrun's "
                         "--nnodes, its rendezvous read from Slurm's environment (build --executor slurm)",
                         omit=True)
    sharding: str = setting("none", Symbol(("none", "fsdp"), "sharding"),
                            "`fsdp`: weights, gradients and optimizer state sharded across the "
                            "processes (accelerate's FSDP), for full fine-tunes that do not fit "
                            "one device", omit=True)
    device: str = setting("auto", Symbol(("auto", "cpu", "cuda"), "device"))
    precision: str = setting("auto", Symbol(("auto", "f32", "bf16", "f16"), "precision"),
                             "mixed precision (autocast): auto is the weights' half dtype on CUDA "
                             "(bf16 over f32 weights), none on CPU")
    # Precision and memory (docs/export.md). Written only when set, so that steps that do not
    # set them keep their keys.
    dtype: str = setting("auto", Symbol(("auto",) + DTYPES, "dtype"),
                         "the weights the stage trains: auto is bf16 on CUDA (f16 on a GPU without "
                         "bf16, f32 there for full fine-tuning), f32 on CPU; a LoRA stage keeps its "
                         "base frozen in it and its adapter in f32", omit=True)
    quantize: str = setting("none", Symbol(("none", "nf4"), "quantization"),
                            "`nf4`: QLoRA, the frozen base in 4-bit NF4 (bitsandbytes, CUDA only, "
                            "with a `lora(...)` adapter)", omit=True)
    attention: str = setting("sdpa", Symbol(("sdpa", "eager", "flash_attention_2"), "attention"),
                             "attention implementation (`flash_attention_2` needs flash-attn, CUDA "
                             "and bf16 or f16)", omit=True)
    gradient_checkpointing: bool = setting(True, Bool(), "recompute each layer's activations in the "
                                           "backward pass instead of keeping them: far less memory, "
                                           "about a third more compute", omit=True)
    liger: bool = setting(False, Bool(), "Liger's fused kernels (liger-kernel, CUDA only)", omit=True)

    # Settings placed before the method's own fields in the schema (and the reference); the
    # rest come after them.
    BEFORE_OPTIONS: ClassVar[tuple[str, ...]] = (
        "epochs", "max_steps", "lr", "batch", "accumulate", "seed", "warmup", "scheduler",
        "weight_decay", "max_grad_norm", "max_len")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(StageSettings):
    BLOCK: ClassVar[str] = "stage"
    ELSEWHERE: ClassVar[dict[str, str]] = {
        "model": "the `model` input (the starting model; `base_model` names the root of the chain)",
        "needs": "inputs needs0, needs1, … (order only)"}
    DERIVED: ClassVar[dict[str, str]] = {
        "name": "the block's name", "base_model": "the model at the root of the stage chain",
        "options": "the method's own fields, written beside the others"}

    name: str = "stage"
    method: str = "sft"
    data: DataView = DataView("corpus", "")
    adapter: Adapter = Full()
    base_model: str = ""
    options: Any = dataclasses.field(default=None, metadata={FLATTEN: True})

    def settings(self) -> StageSettings:
        return StageSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(StageSettings)})


@dataclass(frozen=True, kw_only=True)
class AssembleConfig:
    BLOCK: ClassVar[str] = "assemble"
    ELSEWHERE: ClassVar[dict[str, str]] = {"from": "stage"}
    DERIVED: ClassVar[dict[str, str]] = {"name": "the block's name", "stage": "`from`",
                                         "base_model": "the model at the root of the stage chain"}

    name: str = "model"
    stage: str = ""
    base_model: str = ""
    merge: bool = setting(True, Bool(), "merge LoRA adapters into the weights")
    dtype: str = setting("f32", Symbol(DTYPES, "dtype"))
    shard_size: int = setting(5 * 1024**3, Size("bytes"))


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    BLOCK: ClassVar[str] = "export"
    ELSEWHERE: ClassVar[dict[str, str]] = {"from": "the `model` input", "quants": "quant (one step each)"}
    DERIVED: ClassVar[dict[str, str]] = {"export": "the block's name", "quant": "one of `quants`"}

    export: str = "export"
    quant: str = ""
    format: str = "gguf"


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Gates and metrics in their JSON form: `{"metric", "model", "args", "attr", "label",
    "data"?, "split"?, "where"?, "suite"?}`, `{"const": x}`, `{"op", "left", "right"}`."""

    BLOCK: ClassVar[str] = "eval"
    ELSEWHERE: ClassVar[dict[str, str]] = {"needs": "inputs needs0, needs1, … (order only)"}
    DERIVED: ClassVar[dict[str, str]] = {"name": "the block's name", "gates": "the block's `check` lines"}

    name: str = "eval"
    on: str = ""
    gates: tuple[dict[str, Any], ...] = ()
    metrics: tuple[dict[str, Any], ...] = ()


BLOCK_CONFIGS: tuple[type, ...] = (ModelConfig, CorpusConfig, PairsConfig, TrainConfig, AssembleConfig,
                                   ExportConfig, EvalConfig)

"""What each block kind accepts: fields, their types, defaults and documentation.

The checker reads these tables; `docs/language.md` describes the same fields for people.
"""

from __future__ import annotations

from dataclasses import dataclass

from .types import (Any_, Bool, DataRef, Float, Fraction, Func, Gate, Int, ListOf, Metric, OneOf,
                    Param, Predicate, Ref, Size, Str, Symbol, Target, Type)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: Type
    required: bool = False
    default: object = None
    doc: str = ""
    methods: tuple[str, ...] = ()  # stage fields that apply to these methods only


@dataclass(frozen=True)
class BlockSchema:
    kind: str
    fields: tuple[FieldSpec, ...]
    doc: str
    checks: bool = False  # accepts `check` statements
    sub_blocks: tuple[str, ...] = ()  # free-form sub-blocks (`meta { ... }`)

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


# --- vocabularies ------------------------------------------------------------------------------

ARCHITECTURES = ("llama", "qwen2", "mistral")
TEMPLATES = ("chatml", "llama3", "own")
DTYPES = ("f32", "f16", "bf16")
ROLES = ("mayor", "polecat", "witness", "refinery", "deacon", "crew", "boot", "dog")
SCRUB_KINDS = ("secrets", "pii", "emails", "phones", "ips", "home_paths")
TRANSCRIPT_FORMATS = ("claude_code", "chat", "pairs", "text")

# llama.cpp's quantization types (LLAMA_FTYPE_MOSTLY_*), with the row length each needs and
# whether it needs an importance matrix. A row that does not divide makes llama.cpp fall back
# silently to another type, so the checker refuses it instead.
QUANT_TYPES: dict[str, tuple[int, bool]] = {
    "f32": (1, False), "f16": (1, False), "bf16": (1, False),
    "q4_0": (32, False), "q4_1": (32, False), "q5_0": (32, False), "q5_1": (32, False),
    "q8_0": (32, False), "iq4_nl": (32, False),
    "q2_k": (256, False), "q2_k_s": (256, False), "q3_k_s": (256, False), "q3_k_m": (256, False),
    "q3_k_l": (256, False), "q4_k_s": (256, False), "q4_k_m": (256, False),
    "q5_k_s": (256, False), "q5_k_m": (256, False), "q6_k": (256, False), "iq4_xs": (256, False),
    "iq3_s": (256, False), "iq3_m": (256, False), "iq3_xs": (256, False),
    "tq1_0": (256, False), "tq2_0": (256, False),
    "iq2_xxs": (256, True), "iq2_xs": (256, True), "iq2_s": (256, True), "iq2_m": (256, True),
    "iq1_s": (256, True), "iq1_m": (256, True), "iq3_xxs": (256, True),
}

# Session metadata a `where`, `chosen` or `rejected` condition may test, with its type.
METADATA_FIELDS: dict[str, type] = {
    "role": str, "outcome": str, "bead": str, "session": str, "date": str, "branch": str,
    "source": str, "turns": int, "tool_calls": int, "length": int,
    "kind": str, "agent": str, "rig": str, "parent": str, "link": str, "segment": int,
}

# --- constructor functions ---------------------------------------------------------------------

HUB = Func("hub", (
    Param("id", Str(), required=True, positional=True, doc="the hub repository id (org/name)"),
    Param("revision", Str(), default="main", positional=True, doc="branch, tag or commit"),
), doc="a model or tokenizer from the Hugging Face hub (downloaded at build time)")

PATH = Func("path", (
    Param("dir", Str(), required=True, positional=True, doc="a local folder, relative to the formula"),
), doc="a model or tokenizer in a local folder")

INIT = Func("init", (
    Param("arch", Symbol(ARCHITECTURES, "architecture"), required=True, positional=True),
    Param("hidden", Int(8, 65536), required=True),
    Param("layers", Int(1, 512), required=True),
    Param("heads", Int(1, 1024), required=True),
    Param("kv_heads", Int(1, 1024)),
    Param("ffn", Int(8, 262144), required=True),
    Param("context", Int(16, 1 << 20), default=2048),
    Param("seed", Int(0), default=0),
), doc="a small model of the given architecture with random weights, made locally")

TRAIN_BPE = Func("train_bpe", (
    Param("corpus", Ref(("corpus",)), required=True, positional=True),
    Param("vocab", Int(64, 1 << 20), required=True),
), doc="a byte-level BPE tokenizer trained on a corpus's training split")

TEMPLATE_FILE = Func("file", (
    Param("path", Str(), required=True, positional=True),
), doc="a Jinja chat template in a file, relative to the formula")

# How Claude Code transcripts are read (docs/data.md): shared by `transcripts(...)` and `gastown(...)`.
CLAUDE_CODE_READING = (
    Param("subagents", Bool(), default=True,
          doc="subagent transcripts as their own examples (`<session>/<agent>`), marked kind = \"subagent\""),
    Param("branches", Symbol(("final", "all"), "branch choice"), default="final",
          doc="`final`: the conversation as it ended; `all`: rewound branches too, as examples of their own"),
    Param("thinking", Symbol(("drop", "keep"), "thinking policy"), default="drop",
          doc="`keep` carries thinking blocks as `reasoning_content` for templates that render it"),
)

TRANSCRIPTS = Func("transcripts", (
    Param("glob", Str(), required=True, positional=True, doc="files, relative to the formula"),
    Param("format", Symbol(TRANSCRIPT_FORMATS, "transcript format"), default="claude_code"),
    Param("meta", OneOf((Symbol(("transcript",), "metadata source"),
                         Func("sidecar", (Param("path", Str(), required=True, positional=True),)),
                         Func("pattern", (Param("regex", Str(), required=True, positional=True),)))),
          default="transcript", doc="where session metadata comes from"),
    *CLAUDE_CODE_READING,
), doc="transcript files by glob")

GASTOWN = Func("gastown", (
    Param("projects", Str(), default="~/.claude/projects", positional=True,
          doc="the Claude Code projects folder"),
    Param("beads", Str(), required=True, doc="a beads JSONL export (.beads/issues.jsonl)"),
    Param("town", Str(), default="~/gt", doc="the Gas Town root the agents ran in"),
    Param("outcomes", Str(), doc="outcome rules (TOML), relative to the formula; default: "
          "Gas Town's close reasons (docs/data.md)"),
    *CLAUDE_CODE_READING,
), doc="a Claude Code projects folder; roles from the agents' cwd, outcomes from beads")

NEAR = Func("near", (
    Param("threshold", Fraction(0.0, 1.0, lo_open=True), required=True, positional=True),
), doc="near-duplicate removal at a Jaccard similarity threshold")

LORA = Func("lora", (
    Param("r", Int(1, 4096), default=16),
    Param("alpha", Float(0, lo_open=True)),
    Param("dropout", Fraction(0.0, 1.0, hi_open=True), default=0.05),
    Param("targets", ListOf(Symbol((), "module name", open=True), min_len=1),
          default=("q_proj", "k_proj", "v_proj", "o_proj")),
    Param("bias", Symbol(("none", "all", "lora_only"), "bias mode"), default="none"),
    Param("rslora", Bool(), default=False),
    Param("dora", Bool(), default=False),
), doc="a LoRA adapter (peft)")

# Metrics usable in eval checks: the first positional may be a model (defaults to `on`).
PERPLEXITY = Func("perplexity", (
    Param("data", DataRef(), required=True, positional=True),
), doc="perplexity on a corpus split")
EOS_RATE = Func("eos_rate", (
    Param("data", DataRef(), required=True, positional=True),
    Param("max_new_tokens", Int(1, 1 << 16), default=64),
), doc="share of generations that end with the end-of-turn token before the length limit")
PROMPTS = Func("prompts", (
    Param("file", Str(), required=True, positional=True),
    Param("scorer", Symbol(("exact", "contains", "regex", "json_schema", "tool_call"), "scorer"),
          default="contains"),
    Param("max_new_tokens", Int(1, 1 << 16), default=128),
), doc="a prompt suite from JSONL; `.pass_rate` is the share of passed prompts")
METRICS = {f.name: f for f in (PERPLEXITY, EOS_RATE, PROMPTS)}
METRIC_ATTRS = {"prompts": ("pass_rate",)}

# --- block schemas -----------------------------------------------------------------------------

SCHEMAS: dict[str, BlockSchema] = {
    s.kind: s
    for s in (
        BlockSchema("formula", (
            FieldSpec("description", Str(), doc="one line on what the formula makes"),
            FieldSpec("version", OneOf((Str(), Int(0))), doc="the formula's own version"),
            FieldSpec("tags", ListOf(Str()), default=(), doc="free labels"),
            FieldSpec("abstract", Bool(), default=False,
                      doc="only for `extends` and `use`: required vars may stay unset"),
        ), doc="the header: the formula's name and description", sub_blocks=("meta",)),
        BlockSchema("model", (
            FieldSpec("from", OneOf((HUB, PATH, INIT)), required=True,
                      doc="where the weights come from"),
            FieldSpec("tokenizer", OneOf((Symbol(("own",), "tokenizer"), TRAIN_BPE, HUB, PATH)),
                      default="own", doc="the model's own tokenizer, or another"),
            FieldSpec("template", OneOf((Symbol(TEMPLATES, "chat template"), TEMPLATE_FILE)),
                      doc="chat template; `own` keeps the base model's (default: own, chatml for init)"),
            FieldSpec("dtype", Symbol(("auto",) + DTYPES, "dtype"), default="auto",
                      doc="dtype the weights are loaded in"),
        ), doc="a base model"),
        BlockSchema("corpus", (
            FieldSpec("source", OneOf((TRANSCRIPTS, GASTOWN, ListOf(OneOf((TRANSCRIPTS, GASTOWN)),
                                                                      min_len=1))),
                      required=True, doc="transcript files, or a Gas Town projects folder"),
            FieldSpec("where", Predicate(), doc="keep sessions whose metadata matches"),
            FieldSpec("scrub", ListOf(Symbol(SCRUB_KINDS, "scrub kind")),
                      default=("secrets", "pii"), doc="what to replace with typed placeholders"),
            FieldSpec("dedup", OneOf((Symbol(("exact", "none"), "dedup mode"), NEAR)),
                      default="exact", doc="duplicate removal"),
            FieldSpec("holdout", Fraction(0.0, 1.0, hi_open=True), default=0.0,
                      doc="share held out, chosen by a hash of the session id"),
            FieldSpec("max_len", Size("tokens"), doc="examples longer than this many tokens are truncated or dropped"),
            FieldSpec("truncation", Symbol(("end", "drop"), "truncation policy"), default="end",
                      doc="`end` keeps the first max_len tokens; `drop` drops the session"),
            FieldSpec("min_turns", Int(1), default=1, doc="drop sessions with fewer turns"),
            FieldSpec("max_turns", Int(1), doc="drop sessions with more turns"),
            FieldSpec("max_repeats", Int(1), default=3,
                      doc="drop sessions that repeat the same failing tool call this many times"),
            FieldSpec("on_error", Symbol(("fail", "skip"), "error policy"), default="fail",
                      doc="a malformed line fails the build, or is counted and skipped"),
            FieldSpec("max_dropped", Fraction(), default=1.0,
                      doc="fail the build when filters drop more than this share"),
        ), doc="sessions read, scrubbed and filtered"),
        BlockSchema("pairs", (
            FieldSpec("from", DataRef(), doc="build pairs from a corpus"),
            FieldSpec("source", TRANSCRIPTS, doc="or read given pairs (format = pairs)"),
            FieldSpec("chosen", Predicate(), doc="sessions that are the chosen side"),
            FieldSpec("rejected", Predicate(), doc="sessions that are the rejected side"),
            FieldSpec("match", Symbol(("bead", "prompt"), "match key"), default="bead",
                      doc="pair sessions on the same bead, or with the same first prompt"),
        ), doc="preference pairs"),
        BlockSchema("stage", (
            FieldSpec("method", Symbol(("sft", "dpo"), "training method"), required=True),
            FieldSpec("model", Ref(("model", "stage")), required=True,
                      doc="the starting model: a base model or an earlier stage"),
            FieldSpec("data", DataRef(), required=True, doc="a corpus (sft) or pairs (dpo)"),
            FieldSpec("adapter", OneOf((Symbol(("full",), "adapter"), LORA)), default="full",
                      doc="`full` fine-tuning or a `lora(...)` adapter"),
            FieldSpec("epochs", Float(0, 1000, lo_open=True), default=1),
            FieldSpec("max_steps", Int(1), doc="stop after this many optimizer steps"),
            FieldSpec("lr", Float(0, 1, lo_open=True), default=1e-4, doc="peak learning rate"),
            FieldSpec("batch", Int(1, 1 << 16), default=8, doc="examples per device and step"),
            FieldSpec("accumulate", Int(1, 1 << 16), default=1, doc="gradient accumulation steps"),
            FieldSpec("seed", Int(0, 2**32 - 1), default=0),
            FieldSpec("warmup", Fraction(0.0, 1.0, hi_open=True), default=0.0,
                      doc="share of steps spent warming up"),
            FieldSpec("scheduler", Symbol(("constant", "linear", "cosine"), "scheduler"),
                      default="linear"),
            FieldSpec("weight_decay", Float(0, 1), default=0.0),
            FieldSpec("max_grad_norm", Float(0, lo_open=True), default=1.0),
            FieldSpec("max_len", Size("tokens"), doc="sequence length (default: the corpus's)"),
            FieldSpec("packing", Bool(), default=False, methods=("sft",)),
            FieldSpec("assistant_only", Bool(), default=True, methods=("sft",),
                      doc="loss on assistant tokens only"),
            FieldSpec("beta", Float(0, lo_open=True), default=0.1, methods=("dpo",)),
            FieldSpec("loss", Symbol(("sigmoid", "ipo", "hinge"), "DPO loss"), default="sigmoid",
                      methods=("dpo",)),
            FieldSpec("save_every", Int(1), default=50, doc="checkpoint every N steps"),
            FieldSpec("log_every", Int(1), default=5, doc="log metrics every N steps"),
            FieldSpec("processes", Int(1, 1024), default=1, doc="data-parallel processes"),
            FieldSpec("device", Symbol(("auto", "cpu", "cuda"), "device"), default="auto"),
            FieldSpec("precision", Symbol(("auto", "f32", "bf16", "f16"), "precision"),
                      default="auto"),
            FieldSpec("needs", ListOf(Ref(("model", "corpus", "pairs", "stage", "assemble",
                                            "export", "eval"))), default=(),
                      doc="run after these blocks, beyond what references imply"),
        ), doc="one training stage"),
        BlockSchema("assemble", (
            FieldSpec("from", Ref(("stage",)), required=True),
            FieldSpec("merge", Bool(), default=True, doc="merge LoRA adapters into the weights"),
            FieldSpec("dtype", Symbol(DTYPES, "dtype"), default="f32"),
            FieldSpec("shard_size", Size("bytes"), default=5 * 1024**3),
        ), doc="a standalone model folder from a stage"),
        BlockSchema("export", (
            FieldSpec("from", Ref(("assemble", "model")), required=True),
            FieldSpec("format", Symbol(("gguf",), "export format"), default="gguf"),
            FieldSpec("quants", ListOf(Symbol(tuple(QUANT_TYPES), "quantization type"), min_len=1),
                      required=True, doc="GGUF files to write, one per type"),
        ), doc="GGUF files for llama.cpp"),
        BlockSchema("eval", (
            FieldSpec("on", Target(), required=True, doc="what the checks measure"),
            FieldSpec("metrics", ListOf(Metric()), default=(), doc="reported, not gated"),
            FieldSpec("needs", ListOf(Ref(("model", "corpus", "pairs", "stage", "assemble",
                                            "export", "eval"))), default=()),
        ), doc="metrics and the gates a build must pass", checks=True),
    )
}

VAR_TYPES: dict[str, Type] = {
    "str": Str(), "int": Int(), "float": Float(), "bool": Bool(), "percent": Fraction(),
    "tokens": Size("tokens"), "bytes": Size("bytes"), "list": ListOf(Any_()),
}

"""What each block kind accepts: fields, their types, defaults and documentation.

The checker reads these tables; `docs/reference.md` is generated from them and
`docs/language.md` describes the same fields for people. Defaults are not written here: a field
that a step configuration holds under the same name is declared there (`formula/contract/steps.py`,
`setting(...)`) and taken from it whole, the arguments of a call default to the fields of the
record it builds, and the fields of a training method or the names of an export format's quant
types come from their registries (`formula/methods/`, `formula/formats/`).
"""

from __future__ import annotations

from dataclasses import dataclass

from formula.contract.config import default_of, settings_of
from formula.contract.steps import (AssembleConfig, CorpusConfig, ExportConfig, Full,
                                    GastownSource, HubSource, InitSource, Lora, ModelConfig,
                                    PairsConfig, StageSettings, TranscriptSource)
from formula.contract.types import (Any_, Bool, DataRef, Float, Fraction, Func, Int, ListOf, Metric,
                                    OneOf, Param, Ref, Size, Str, Symbol, Target, Type)
from formula.formats import FORMATS, all_quants
from formula.methods import METHODS, method_fields


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


def settings(config: type, *names: str) -> tuple[FieldSpec, ...]:
    """The fields a step configuration declares with `setting(...)`, as the formula sees them."""
    declared = {f.name: (f, s) for f, s in settings_of(config)}
    return tuple(FieldSpec(n, declared[n][1].type, default=declared[n][0].default, doc=declared[n][1].doc)
                 for n in names)


def _method_specs() -> tuple[FieldSpec, ...]:
    """Each training method's own fields; a field several methods share is listed once."""
    out = []
    for name, (s, defaults) in method_fields().items():
        values = list(defaults.values())
        same = all(v == values[0] for v in values)
        doc = s.doc if same else (s.doc + "; " if s.doc else "") + "default " + ", ".join(
            f"{v} for {m}" for m, v in defaults.items())
        out.append(FieldSpec(name, s.type, default=values[0] if same else None, doc=doc,
                             methods=tuple(defaults)))
    return tuple(out)


def _stage_fields() -> tuple[FieldSpec, ...]:
    shared = [f.name for f, _ in settings_of(StageSettings)]
    before = StageSettings.BEFORE_OPTIONS
    return (settings(StageSettings, *before) + _method_specs()
            + settings(StageSettings, *(n for n in shared if n not in before)))


def _data_doc() -> str:
    by_block: dict[str, list[str]] = {}
    for m in METHODS.values():
        by_block.setdefault(m.data.block, []).append(m.name)
    what = {"corpus": "a corpus", "pairs": "pairs"}
    return " or ".join(f"{what[b]} ({', '.join(names)})" for b, names in sorted(by_block.items()))


# --- vocabularies ------------------------------------------------------------------------------

ARCHITECTURES = ("llama", "qwen2", "mistral")
TEMPLATES = ("chatml", "llama3", "own")
ROLES = ("mayor", "polecat", "witness", "refinery", "deacon", "crew", "boot", "dog")
TRANSCRIPT_FORMATS = ("claude_code", "chat", "pairs", "text")

# Session metadata a `where`, `chosen` or `rejected` condition may test, with its type.
METADATA_FIELDS: dict[str, type] = {
    "role": str, "outcome": str, "bead": str, "session": str, "date": str, "branch": str,
    "source": str, "turns": int, "tool_calls": int, "length": int,
    "kind": str, "agent": str, "rig": str, "parent": str, "link": str, "segment": int,
}

# --- constructor functions ---------------------------------------------------------------------

HUB = Func("hub", (
    Param("id", Str(), required=True, positional=True, doc="the hub repository id (org/name)"),
    Param("revision", Str(), default=default_of(HubSource, "revision"), positional=True,
          doc="branch, tag or commit"),
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
    Param("context", Int(16, 1 << 20), default=default_of(InitSource, "context")),
    Param("seed", Int(0), default=default_of(InitSource, "seed")),
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
    Param("subagents", Bool(), default=default_of(TranscriptSource, "subagents"),
          doc="subagent transcripts as their own examples (`<session>/<agent>`), marked kind = \"subagent\""),
    Param("branches", Symbol(("final", "all"), "branch choice"),
          default=default_of(TranscriptSource, "branches"),
          doc="`final`: the conversation as it ended; `all`: rewound branches too, as examples of their own"),
    Param("thinking", Symbol(("drop", "keep"), "thinking policy"),
          default=default_of(TranscriptSource, "thinking"),
          doc="`keep` carries thinking blocks as `reasoning_content` for templates that render it"),
    # Limits on input: a larger line or file fails with its file and line (`on_error = skip`: skipped).
    Param("max_event", Size("bytes"), default=default_of(TranscriptSource, "max_event"),
          doc="the largest line of a JSONL file (a `text` file: the file)"),
    Param("max_session", Size("bytes"), default=default_of(TranscriptSource, "max_session"),
          doc="the largest Claude Code transcript file"),
    Param("max_session_events", Int(1), default=default_of(TranscriptSource, "max_session_events"),
          doc="the most events in one Claude Code transcript file"),
)

TRANSCRIPTS = Func("transcripts", (
    Param("glob", Str(), required=True, positional=True, doc="files, relative to the formula"),
    Param("format", Symbol(TRANSCRIPT_FORMATS, "transcript format"),
          default=default_of(TranscriptSource, "format")),
    Param("meta", OneOf((Symbol(("transcript",), "metadata source"),
                         Func("sidecar", (Param("path", Str(), required=True, positional=True),)),
                         Func("pattern", (Param("regex", Str(), required=True, positional=True),)))),
          default=default_of(TranscriptSource, "meta"), doc="where session metadata comes from"),
    *CLAUDE_CODE_READING,
), doc="transcript files by glob")

GASTOWN = Func("gastown", (
    Param("projects", Str(), default=default_of(GastownSource, "projects"), positional=True,
          doc="the Claude Code projects folder"),
    Param("beads", Str(), required=True, doc="a beads JSONL export (.beads/issues.jsonl)"),
    Param("town", Str(), default=default_of(GastownSource, "town"), doc="the Gas Town root the agents ran in"),
    Param("outcomes", Str(), doc="outcome rules (TOML), relative to the formula; default: "
          "Gas Town's close reasons (docs/data.md)"),
    *CLAUDE_CODE_READING,
), doc="a Claude Code projects folder; roles from the agents' cwd, outcomes from beads")

NEAR = Func("near", (
    Param("threshold", Fraction(0.0, 1.0, lo_open=True), required=True, positional=True),
), doc="near-duplicate removal at a Jaccard similarity threshold")

LORA = Func("lora", (
    Param("r", Int(1, 4096), default=default_of(Lora, "r")),
    Param("alpha", Float(0, lo_open=True), doc="default: 2 × r"),
    Param("dropout", Fraction(0.0, 1.0, hi_open=True), default=default_of(Lora, "dropout")),
    Param("targets", ListOf(Symbol((), "module name", open=True), min_len=1),
          default=default_of(Lora, "targets")),
    Param("bias", Symbol(("none", "all", "lora_only"), "bias mode"), default=default_of(Lora, "bias")),
    Param("rslora", Bool(), default=default_of(Lora, "rslora")),
    Param("dora", Bool(), default=default_of(Lora, "dora")),
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
NEXT_ACTION = Func("next_action", (
    Param("data", DataRef(), required=True, positional=True, doc="a corpus split (its sessions)"),
    Param("max_new_tokens", Int(1, 1 << 16), default=256,
          doc="at most this many tokens per turn (and at most twice the reference's, plus 16)"),
    Param("max_turns", Int(1, 1 << 24), default=1000,
          doc="whole sessions, in the order of a hash of their id, until this many turns"),
), doc="every assistant turn of the sessions, answered from the conversation before it: "
       "`.tool_accuracy`, `.args_exact`, `.args_similarity`, `.text_similarity`, `.stop_accuracy`")
LM_EVAL = Func("lm_eval", (
    Param("task", Str(), required=True, positional=True,
          doc="a task of lm-evaluation-harness (`hellaswag`), or a task file (`.yaml`) whose folder "
              "holds its data"),
    Param("limit", Int(1, 1 << 24), default=1000, doc="at most this many documents (the first ones)"),
    Param("num_fewshot", Int(0, 64), default=0, doc="examples put before each question"),
    Param("batch_size", Int(1, 1024), default=8),
), doc="a task of lm-evaluation-harness (the `lmeval` extra) on a model folder: `.acc`, "
       "`.acc_norm` or whichever figure the task reports")
METRICS = {f.name: f for f in (PERPLEXITY, EOS_RATE, PROMPTS, NEXT_ACTION, LM_EVAL)}


def is_task_file(task: str) -> bool:
    """An lm_eval task named by its YAML file (else by its name in the harness's registry)."""
    return task.endswith((".yaml", ".yml"))


# Figures lm-evaluation-harness's tasks commonly report (a task names its own; any may be used).
LM_EVAL_FIGURES = ("acc", "acc_norm", "exact_match", "f1", "mcc", "bleu", "word_perplexity",
                   "byte_perplexity", "bits_per_byte")
METRIC_ATTRS = {"prompts": ("pass_rate",),
                "next_action": ("tool_accuracy", "args_exact", "args_similarity", "text_similarity",
                                "stop_accuracy")}
# `next_action(tagged("v1"), data.holdout)`: a metric of an earlier build, the one named with
# `formula tag v1 FORMULA`: its output of the eval's `on` target, or of the target named second.
TAGGED = Func("tagged", (
    Param("tag", Str(), required=True, positional=True, doc="a name given with `formula tag`"),
    Param("target", Target(), positional=True,
          doc="which of that build's outputs (default: the eval's `on`)"),
), doc="the same target in an earlier build, named with `formula tag NAME FORMULA`")
# `check significant(COMPARISON, confidence = 0.95)`: the comparison must also hold in all but
# 1 - confidence of the paired bootstrap resamples of the sessions.
SIGNIFICANT = Func("significant", (
    Param("confidence", Fraction(0.5, 1.0, lo_open=True, hi_open=True), default=0.95),
), doc="a check that must hold beyond the noise of the held-out sample")
# `check not_worse(A >= B, confidence = 0.95)`: fails only where the paired resamples show A
# below B beyond the noise (non-inferiority): a regression gate that equal models pass.
NOT_WORSE = Func("not_worse", (
    Param("confidence", Fraction(0.5, 1.0, lo_open=True, hi_open=True), default=0.95),
), doc="a `>=` or `<=` check that fails only on a difference the other way beyond the noise")
# The checks that wrap a comparison, by name: the statistical test each asks of the eval step.
GATE_TESTS = {"significant": SIGNIFICANT, "not_worse": NOT_WORSE}

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
            *settings(ModelConfig, "dtype", "allow_pickle"),
        ), doc="a base model"),
        BlockSchema("corpus", (
            FieldSpec("source", OneOf((TRANSCRIPTS, GASTOWN, ListOf(OneOf((TRANSCRIPTS, GASTOWN)),
                                                                      min_len=1))),
                      required=True, doc="transcript files, or a Gas Town projects folder"),
            *settings(CorpusConfig, "where", "scrub"),
            FieldSpec("dedup", OneOf((Symbol(("exact", "none"), "dedup mode"), NEAR)),
                      default=default_of(CorpusConfig, "dedup"), doc="duplicate removal"),
            *settings(CorpusConfig, "holdout", "max_len", "truncation", "min_turns", "max_turns",
                      "max_repeats", "on_error", "max_dropped"),
        ), doc="sessions read, scrubbed and filtered"),
        BlockSchema("pairs", (
            FieldSpec("from", DataRef(), doc="build pairs from a corpus"),
            FieldSpec("source", TRANSCRIPTS, doc="or read given pairs (format = pairs)"),
            *settings(PairsConfig, "chosen", "rejected", "match"),
        ), doc="preference pairs"),
        BlockSchema("stage", (
            FieldSpec("method", Symbol(tuple(METHODS), "training method"), required=True),
            FieldSpec("model", Ref(("model", "stage")), required=True,
                      doc="the starting model: a base model or an earlier stage"),
            FieldSpec("data", DataRef(), required=True, doc=_data_doc()),
            FieldSpec("adapter", OneOf((Symbol((Full.TAG,), "adapter"), LORA)), default=Full.TAG,
                      doc="`full` fine-tuning or a `lora(...)` adapter"),
            *_stage_fields(),
            FieldSpec("needs", ListOf(Ref(("model", "corpus", "pairs", "stage", "assemble",
                                            "export", "eval"))), default=(),
                      doc="run after these blocks, beyond what references imply"),
        ), doc="one training stage"),
        BlockSchema("assemble", (
            FieldSpec("from", Ref(("stage",)), required=True),
            *settings(AssembleConfig, "merge", "dtype", "shard_size"),
        ), doc="a standalone model folder from a stage"),
        BlockSchema("export", (
            FieldSpec("from", Ref(("assemble", "model")), required=True),
            FieldSpec("format", Symbol(tuple(FORMATS), "export format"),
                      default=default_of(ExportConfig, "format")),
            FieldSpec("quants", ListOf(Symbol(all_quants(), "quantization type"), min_len=1),
                      required=True, doc="files to write, one per type"),
        ), doc="exported model files: " + "; ".join(f"`{f.name}`, {f.doc}" for f in FORMATS.values())),
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

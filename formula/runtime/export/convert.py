"""Hugging Face model folder → GGUF, written on the `gguf` package.

Tensors are streamed: every tensor's header is declared from the safetensors metadata alone,
then each tensor is read, converted and written before the next is touched, so peak memory
stays near the largest tensor instead of the model. Reading uses safetensors' numpy view (no
torch import) unless the weights are bf16, which numpy cannot hold.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .families import (FAMILIES, Family, FamilyError, head_dim, language_config, language_tensor, llama3_rope_factors,
                       rope_parameters)

OUT_TYPES = ("f32", "f16", "bf16")


class ConvertError(Exception):
    """A model folder this converter cannot turn into a GGUF llama.cpp will load."""


@dataclass(frozen=True)
class Converted:
    path: Path
    tensors: int
    parameters: int
    arch: str
    tokenizer_pre: str
    chat_template: str | None
    caveats: tuple[str, ...] = ()  # where llama.cpp will run the model differently from transformers


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ConvertError(f"{folder}: no config.json, so not a model folder")
    return json.loads(path.read_text())


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise ConvertError(f"{folder}: no model.safetensors (only safetensors weights are converted)")


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary layout (two halves) → llama.cpp's (interleaved pairs), per head."""
    rows = w.shape[0]
    return (w.reshape(heads, 2, rows // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _out_type(name: str, shape: tuple[int, ...], want: str):
    import gguf

    q = gguf.GGMLQuantizationType
    # Norms and biases (1-D) stay f32, as llama.cpp's own converter does.
    if want == "f32" or len(shape) == 1:
        return q.F32
    return q.F16 if want == "f16" else q.BF16


class _BufferedWrite(np.ndarray):
    """An array whose `tofile` (what GGUFWriter calls) is one buffered write of its memory:
    numpy's own tofile is about 3x slower here, and writing is most of a conversion."""

    def tofile(self, fh, *args, **kwargs):  # noqa: ARG002 - numpy's signature
        fh.write(memoryview(np.ascontiguousarray(self.view(np.ndarray))).cast("B"))


def _encode(arr: np.ndarray, qtype) -> np.ndarray:
    import gguf

    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(arr, dtype=np.float16)
    return gguf.quants.quantize(np.asarray(arr, dtype=np.float32), qtype)


class _Reader:
    """One tensor at a time from (possibly sharded) safetensors, read with plain reads at the
    offsets of the file's header. safetensors' own reader maps the whole file, and mapped
    pages count toward the process's memory as they are touched; reading keeps the peak near
    one tensor. bf16 (which numpy cannot hold) goes through safetensors and torch instead."""

    DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I32": np.int32, "I64": np.int64}

    def __init__(self, files: list[Path]):
        self.where: dict[str, tuple[Path, int, int]] = {}
        self.meta: dict[str, tuple[str, tuple[int, ...]]] = {}
        for f in files:
            header, base = _safetensors_header(f)
            for name, info in header.items():
                if name != "__metadata__":
                    start, end = info["data_offsets"]
                    self.where[name] = (f, base + start, end - start)
                    self.meta[name] = (info["dtype"], tuple(info["shape"]))
        unknown = {d for d, _ in self.meta.values()} - set(self.DTYPES) - {"BF16"}
        if unknown:
            raise ConvertError(f"weights of type {', '.join(sorted(unknown))} are not converted")
        self._files: dict[Path, BinaryIO] = {}

    def get(self, name: str) -> np.ndarray:
        f, offset, nbytes = self.where[name]
        dtype, shape = self.meta[name]
        if dtype == "BF16":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:
                return st.get_tensor(name).float().numpy()
        fh = self._files.get(f) or self._files.setdefault(f, open(f, "rb"))
        fh.seek(offset)
        arr = np.fromfile(fh, dtype=self.DTYPES[dtype], count=nbytes // np.dtype(self.DTYPES[dtype]).itemsize)
        return arr.reshape(shape)

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The header of a safetensors file and where its data starts."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        return json.loads(fh.read(n)), 8 + n


def _tokenizer(writer, folder: Path, config: dict, family: Family, vocab_size: int) -> str:
    tj = folder / "tokenizer.json"
    if not tj.is_file():
        raise ConvertError(f"{folder}: no tokenizer.json (only fast tokenizers are converted)")
    spec = json.loads(tj.read_text())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ConvertError(f"{tj}: a {model.get('type')} tokenizer; this converter writes BPE tokenizers "
                           "(byte-level, or SentencePiece-style with byte fallback)")
    by_id, added = _vocabulary(spec, tj, vocab_size)
    if model.get("byte_fallback"):
        return _sentencepiece_vocab(writer, folder, spec, tj, by_id, added, vocab_size)
    return _byte_level_vocab(writer, folder, spec, tj, family, by_id, added, vocab_size)


def _vocabulary(spec: dict, tj: Path, vocab_size: int) -> tuple[dict[int, str], dict[str, dict]]:
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    by_id = {i: s for s, i in vocab.items()}
    if max(by_id) >= vocab_size:
        raise ConvertError(f"{tj}: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    return by_id, added


def _tokens_and_types(by_id: dict[int, str], added: dict[str, dict], vocab_size: int, kind) -> tuple[list, list]:
    """One entry per id up to the model's vocab_size (ids no token has become `[PADn]`, unused);
    added tokens are control or user-defined, the rest whatever `kind` says."""
    import gguf

    T = gguf.TokenType
    tokens, types = [], []
    for i in range(vocab_size):
        s = by_id.get(i)
        if s is None:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
        else:
            tokens.append(s)
            types.append((T.CONTROL if added[s].get("special") else T.USER_DEFINED) if s in added else kind(s))
    return tokens, types


def _byte_level_vocab(writer, folder: Path, spec: dict, tj: Path, family: Family, by_id: dict[int, str],
                      added: dict[str, dict], vocab_size: int) -> str:
    import gguf

    pre = family.pre_tokenizer or _pre_tokenizer(spec)
    tokens, types = _tokens_and_types(by_id, added, vocab_size, lambda s: gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # BPE has no scores; llama.cpp reads them anyway, so write the neutral ones its converter does.
    writer.add_token_scores([0.0] * vocab_size)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ConvertError(f"{tj}: a BPE tokenizer without merges")
    _end_of_turn_ids(special, folder, by_id)
    special.add_to_gguf(writer, quiet=True)
    return pre


def _sentencepiece_vocab(writer, folder: Path, spec: dict, tj: Path, by_id: dict[int, str],
                         added: dict[str, dict], vocab_size: int) -> str:
    """A SentencePiece BPE model as transformers holds it (byte fallback, `▁` for spaces) →
    llama.cpp's `llama` tokenizer. It is read from tokenizer.json, not tokenizer.model: that is
    what training tokenized with, and what the assembled folder carries.

    llama.cpp merges by the score of the merged piece, highest first; transformers by the rank
    of the pair. Transformers derives its merges from the SentencePiece scores, so the score of
    a piece is minus the rank of its first merge, which orders both the same way."""
    import gguf

    space_prefix = _space_prefix(folder, added)
    rank: dict[str, int] = {}
    for r, merge in enumerate(spec["model"].get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    unk = spec["model"].get("unk_token")
    T = gguf.TokenType

    def kind(s: str):
        if s == unk:
            return T.UNKNOWN
        return T.BYTE if len(s) == 6 and s.startswith("<0x") and s.endswith(">") else T.NORMAL

    tokens, types = _tokens_and_types(by_id, added, vocab_size, kind)
    scores = [-10000.0 if t == T.UNUSED else -float(rank.get(s, 0)) for s, t in zip(tokens, types)]
    if sum(t == T.BYTE for t in types) != 256:
        raise ConvertError(f"{tj}: byte fallback without all 256 byte tokens <0x00>..<0xFF>")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_add_space_prefix(space_prefix)
    special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=vocab_size)
    _end_of_turn_ids(special, folder, by_id)
    special.add_to_gguf(writer, quiet=True)
    return "default"


def _space_prefix(folder: Path, added: dict[str, dict]) -> bool:
    """llama.cpp's `add_space_prefix`: with it, every text fragment that starts the input or
    follows a special token gets a leading `▁`; without it, none does. transformers may prefix
    only the start, so the flag follows what the tokenizer does after a special token, where
    every chat turn begins: chat prompts then tokenize identically, and raw text at the very
    start may lack the `▁` transformers gives it (docs/export.md). Probed through transformers,
    as training loads it: its tokenizer classes rewrite parts of tokenizer.json on loading."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    special = next((t for t, d in added.items() if d.get("special")), None)
    if special is None:
        start = tok.tokenize("a")
        return bool(start) and start[0].startswith("\u2581")
    after = tok.convert_ids_to_tokens(tok(special + "a", add_special_tokens=False)["input_ids"])
    return len(after) > 1 and after[1].startswith("\u2581")


def end_of_turn_ids(folder: Path) -> list[int]:
    """The ids transformers stops generating at: generation_config.json's EOS ids (the model
    step keeps every one a model lists, with the chat template's end-of-turn token added)."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return []
    eos = json.loads(path.read_text()).get("eos_token_id")
    return [eos] if isinstance(eos, int) else [i for i in eos or [] if isinstance(i, int)]


def _end_of_turn_ids(special, folder: Path, by_id: dict[int, str]) -> None:
    """llama.cpp stops at its EOS, EOT and EOM ids (and at tokens it knows by name, such as
    `<|eot_id|>`); transformers at every id of generation_config.json. The tokenizer's EOS stays
    EOS; the chat template's end-of-turn token becomes EOT, and the next listed id EOM. The gguf
    step checks afterwards that llama.cpp ends generation at every listed id."""
    from formula.contract.templates import analyse

    ids = [i for i in end_of_turn_ids(folder) if i in by_id]
    chosen = special.special_token_ids
    if ids and "eos" not in chosen:
        chosen["eos"] = ids[0]
    template = special.chat_template if isinstance(special.chat_template, str) else None
    end = analyse(template).end_of_turn if template else None
    end_id = next((i for i, s in by_id.items() if s == end), None) if end else None
    rest = [i for i in ids if i != chosen.get("eos")]
    if end_id is not None and end_id in rest:
        rest.remove(end_id)
        rest.insert(0, end_id)
    for kind, tid in zip(("eot", "eom"), rest):
        chosen[kind] = tid


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for the pre-tokenizer; it splits text before BPE, so a wrong one
    tokenizes differently without failing."""
    pre = spec.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [pre])]
    if kinds == ["ByteLevel"] and pre.get("use_regex", True):
        return "gpt-2"
    if "Split" in kinds:
        pattern = json.dumps(pre)
        if "\\\\p{N}{1,3}" in pattern:
            return "llama-bpe"
        if "\\\\p{N}" in pattern:
            return "qwen2"
    raise ConvertError(f"unrecognised pre-tokenizer {kinds}; llama.cpp would tokenize differently")


def convert(folder: Path, out: Path, out_type: str = "f16") -> Converted:
    """Write `folder` as a GGUF at `out`. Raises ConvertError for what it cannot convert."""
    try:
        return _convert(Path(folder), Path(out), out_type)
    except FamilyError as e:
        raise ConvertError(f"{folder}: {e}") from None


def _rope(writer, folder: Path, config: dict, arch_name: str) -> dict[str, np.ndarray]:
    """The rotary settings: the base frequency, and a scaling llama.cpp has; the extra tensors
    a scaling needs (Llama 3's `rope_freqs`)."""
    import gguf

    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = (rope.get("rope_type") or "default").lower()
    if kind == "default":
        return {}
    if kind == "llama3":
        return {gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight": llama3_rope_factors(config)}
    if kind == "linear" and rope.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        return {}
    if kind in ("longrope", "su") and arch_name == "phi3":
        return _longrope(writer, folder, config, rope)
    raise ConvertError(f"{folder}: rope scaling `{kind}` is not converted for {arch_name} "
                       "(converted: default, llama3, linear; longrope for phi3)")


def _longrope(writer, folder: Path, config: dict, rope: dict) -> dict[str, np.ndarray]:
    """Phi-3's long-context rope: per-dimension factors for short and long contexts, and the
    attention factor transformers derives from the context extension, as llama.cpp reads them.
    llama.cpp picks the long factors when its context is longer than the original one;
    transformers when the sequence is."""
    import gguf

    orig = rope.get("original_max_position_embeddings", config.get("original_max_position_embeddings"))
    long, short = rope.get("long_factor"), rope.get("short_factor")
    if not orig or not long or not short or len(long) != len(short):
        raise ConvertError(f"{folder}: longrope scaling without original_max_position_embeddings, or "
                           "without long and short factors of one length")
    scale = config.get("max_position_embeddings", orig) / orig
    factor = rope.get("attention_factor") or (
        math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0)
    writer.add_rope_scaling_attn_factors(float(factor))
    names = gguf.TENSOR_NAMES
    return {names[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight": np.asarray(long, dtype=np.float32),
            names[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight": np.asarray(short, dtype=np.float32)}


def _convert(folder: Path, out: Path, out_type: str) -> Converted:
    import gguf

    if out_type not in OUT_TYPES:
        raise ConvertError(f"output type `{out_type}`: choose one of {', '.join(OUT_TYPES)}")
    config = _config(folder)
    model_type = config.get("model_type", "")
    family = FAMILIES.get(model_type)
    if family is None:
        raise ConvertError(f"{folder}: model type `{model_type}` is not converted "
                           f"(supported: {', '.join(sorted(FAMILIES))})")
    config = language_config(config, family)
    arch = getattr(gguf.MODEL_ARCH, family.arch)
    arch_name = gguf.MODEL_ARCH_NAMES[arch]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    hidden = config["hidden_size"]
    head = head_dim(config)
    vocab_size = config["vocab_size"]

    reader = _Reader(_weight_files(folder))
    names = gguf.get_tensor_name_map(arch, layers)
    tied = config.get("tie_word_embeddings", False)
    # (hf name, or the array of a tensor the converter computes; gguf name; type; shape)
    plan: list[tuple[str | np.ndarray, str, gguf.GGMLQuantizationType, tuple[int, ...]]] = []
    for hf_name in sorted(reader.meta, key=_layer_order):
        own = language_tensor(hf_name, family)
        if own is None or own.endswith("rotary_emb.inv_freq") or (tied and own == "lm_head.weight"):
            continue
        name = names.get_name(own, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConvertError(f"{folder}: tensor `{hf_name}` has no GGUF name for {arch_name}")
        _, shape = reader.meta[hf_name]
        plan.append((hf_name, name, _out_type(name, shape, out_type), shape))

    writer = gguf.GGUFWriter(path=None, arch=arch_name)
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(family.rope_dims(config) if family.rope_dims else head)
    if head != hidden // heads:
        writer.add_key_length(head)
        writer.add_value_length(head)
    for name, arr in _rope(writer, folder, config, arch_name).items():
        plan.insert(0, (arr, name, gguf.GGMLQuantizationType.F32, arr.shape))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    family.metadata(writer, config)
    writer.add_vocab_size(vocab_size)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16}[out_type])
    pre = _tokenizer(writer, folder, config, family, vocab_size)
    writer.add_name(_model_name(config.get("_name_or_path") or folder.name, folder))
    template = (folder / "chat_template.jinja").read_text() if (folder / "chat_template.jinja").is_file() else None

    parameters = 0
    for source, name, qtype, shape in plan:
        parameters += int(np.prod(shape)) if isinstance(source, str) else 0
        nbytes = gguf.quant_shape_to_byte_shape(shape, qtype)[-1] * int(np.prod(shape[:-1]))
        raw = np.uint16 if qtype == gguf.GGMLQuantizationType.BF16 else (
            np.float16 if qtype == gguf.GGMLQuantizationType.F16 else np.float32)
        writer.add_tensor_info(name, shape, np.dtype(raw), nbytes,
                               raw_dtype=qtype if raw is np.uint16 else None)

    writer.open_output_file(out)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for source, name, qtype, _ in plan:
        arr = source if not isinstance(source, str) else _transformed(reader.get(source), source, family,
                                                                       heads, kv_heads)
        writer.write_tensor_data(_encode(arr, qtype).view(_BufferedWrite))
        del arr
    writer.close()
    reader.close()
    return Converted(out, len(plan), parameters, arch_name, pre, template, tuple(family.caveats(config)))


def _transformed(arr: np.ndarray, hf_name: str, family: Family, heads: int, kv_heads: int) -> np.ndarray:
    """A tensor as llama.cpp's graph for the family reads it."""
    if family.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return _permute(arr, heads)
    if family.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return _permute(arr, kv_heads)
    if family.norm_offset and hf_name.endswith("norm.weight"):
        return arr.astype(np.float32) + np.float32(family.norm_offset)
    return arr


# llama.cpp reads Phi-3's tokenizer quirks (whitespace stripped after special tokens, which
# Phi-3's own tokenizer does) from a model *name* containing one of these, and fails to load
# when the vocabulary lacks Phi-3's sentencepiece tokens.
PHI3_NAMES = ("phi-3", "phi3")
PHI3_TOKENS = ("</s>", "<unk>", "<s>", "<|endoftext|>")


def _model_name(name: str, folder: Path) -> str:
    """`general.name`, kept from triggering llama.cpp's Phi-3 tokenizer quirks for a model
    whose tokenizer is not Phi-3's."""
    if not any(n in name.lower() for n in PHI3_NAMES):
        return name
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab = set(spec["model"]["vocab"]) | {t["content"] for t in spec.get("added_tokens", [])}
    if all(t in vocab for t in PHI3_TOKENS):
        return name
    return re.sub("phi-?3", "phi", name, flags=re.IGNORECASE)


def _layer_order(name: str) -> tuple:
    """Embeddings, then blocks in numeric order, then the head: llama.cpp's usual layout."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit() and i > 0 and parts[i - 1] == "layers":
            return (1, int(p), name)
    return (0 if "embed" in name else 2, 0, name)

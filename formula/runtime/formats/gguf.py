"""GGUF at run time: the gguf step, one GGUF file per quantization type of an `export` block, and
how the eval step measures such a file (`open_model`). The format's description (quant types,
the checker's rules, serving) is `formula/formats/gguf.py`.

f32, f16 and bf16 are written by our streaming converter; every other type is written as f32
first (in the work folder) and quantized by llama.cpp's own quantizer, which refuses rows the
type cannot take instead of falling back. The file's chat template must be the model folder's,
byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from formula.contract.steps import ExportConfig
from formula.runtime.step import fail, step_entry
from formula.runtime.steps import typed

LIBRARIES = ("gguf", "llama_cpp_python", "safetensors", "numpy")


Config = ExportConfig  # the step's configuration: formula/contract/steps.py


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    from formula.runtime.export.convert import OUT_TYPES, ConvertError, convert, end_of_turn_ids
    from formula.runtime.export.llama import metadata, tensor_types
    from formula.runtime.export.quantize import quantize

    model = Path(inputs["model"])
    out = output / "model.gguf"
    try:
        if cfg.quant in OUT_TYPES:
            converted = convert(model, out, cfg.quant)
        else:
            f32 = work / "model-f32.gguf"
            converted = convert(model, f32, "f32")
            quantize(f32, out, cfg.quant)
            f32.unlink()
    except ConvertError as e:
        fail(f"export `{cfg.export}` ({cfg.quant}): {e}")
    meta = metadata(out)
    written = meta.get("tokenizer.chat_template")
    folder_template = model / "chat_template.jinja"
    expected = folder_template.read_text(encoding="utf-8") if folder_template.is_file() else None
    if written != expected:
        fail(f"export `{cfg.export}` ({cfg.quant}): the chat template in {out.name} differs from "
             f"{folder_template}; the served model would not see the template it was trained with")
    missing = never_stops(out, end_of_turn_ids(model))
    if missing:
        fail(f"export `{cfg.export}` ({cfg.quant}): llama.cpp would not end generation at token ids "
             f"{missing}, which {model / 'generation_config.json'} lists as end-of-turn: a GGUF holds one "
             "EOS, one EOT and one EOM id (and llama.cpp knows some tokens by name); list at most three "
             "end-of-turn ids, or end assistant turns with the tokenizer's EOS")
    template_sha = hashlib.sha256(expected.encode()).hexdigest() if expected else None
    info: dict[str, Any] = {"quant": cfg.quant, "arch": converted.arch, "tokenizer_pre": converted.tokenizer_pre,
            "parameters": converted.parameters, "tensors": converted.tensors,
            "tensor_types": tensor_types(out), "bytes": out.stat().st_size,
            "template_sha256": template_sha, "caveats": list(converted.caveats)}
    for caveat in converted.caveats:
        print(f"warning: export `{cfg.export}` ({cfg.quant}): {caveat}", file=sys.stderr)
    (output / "gguf.json").write_text(json.dumps(info, indent=1, sort_keys=True))
    (output / "metrics.json").write_text(json.dumps({
        "bytes": info["bytes"], "parameters": info["parameters"], "template_sha256": template_sha,
        "bits_per_weight": round(8 * info["bytes"] / max(1, info["parameters"]), 3)}))
    for name in ("README.md", "lineage.json"):
        if (model / name).is_file():
            (output / name).write_bytes((model / name).read_bytes())


def never_stops(path: Path, ids: list[int]) -> list[int]:
    """The ids among `ids` llama.cpp does not end generation at (reads the vocabulary only)."""
    if not ids:
        return []
    import llama_cpp

    from formula.runtime.export.llama import open_gguf

    with open_gguf(path, vocab_only=True) as llm:
        return [i for i in ids if not llama_cpp.llama_vocab_is_eog(llm._model.vocab, i)]


class GGUFModel:
    """A GGUF in llama.cpp: f32 KV cache, the file's own chat template."""

    def __init__(self, path: Path):
        from formula.runtime.export.llama import open_gguf

        self._cm = open_gguf(path, n_ctx=0, logits_all=True)
        self.llm = self._cm.__enter__()
        self.context = self.llm.n_ctx()

    def nll(self, ids: list[int], labels: list[int]) -> tuple[float, int]:
        import numpy as np

        from formula.runtime.export.llama import logits

        ids, labels = ids[: self.context], labels[: self.context]
        x = logits(self.llm, ids)[:-1].astype(np.float64)
        target = np.asarray(labels[1:])
        keep = target != -100
        x = x[keep]
        logz = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
        return float((logz - x[np.arange(len(x)), target[keep]]).sum()), int(keep.sum())

    def chat(self, messages: list[dict], max_new_tokens: int) -> tuple[str, bool]:
        self.llm.reset()
        r = self.llm.create_chat_completion(messages=messages, max_tokens=max_new_tokens,
                                            temperature=0.0, seed=0)
        choice = r["choices"][0]
        return choice["message"]["content"] or "", choice["finish_reason"] == "stop"

    def next_actions(self, turns: list, max_new_tokens: int) -> tuple[list, dict]:
        from formula.runtime.export.llama import next_actions

        return next_actions(self.llm, turns, max_new_tokens)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def open_model(path: Path) -> GGUFModel:
    return GGUFModel(path)


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

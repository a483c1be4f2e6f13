"""The assemble step: the last stage as a standalone model folder to ship.

Weights in the formula's dtype as safetensors (sharded when larger than `shard_size`), the
tokenizer with its chat template, the generation config, and a model card (README.md) with the
lineage: formula, stages, data and metrics. With `merge = false` and a LoRA stage, the adapter
is shipped beside the weights it applies to instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from formula.contract.steps import AssembleConfig, Lora
from formula.contract.templates import template_hash
from formula.runtime.step import fail, step_entry
from formula.runtime.steps import typed

LIBRARIES = ("torch", "transformers", "safetensors")
DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


Config = AssembleConfig  # the step's configuration: formula/contract/steps.py


def stages_of(lineage: Any) -> list[dict]:
    out = []
    while isinstance(lineage, dict):
        out.append(lineage)
        lineage = lineage.get("starts_from")
    return list(reversed(out)) + ([{"base": lineage}] if isinstance(lineage, str) else [])


def card(cfg: Config, lineage: dict, metrics: dict) -> str:
    chain = stages_of(lineage)
    base = next((s["base"] for s in chain if "base" in s), cfg.base_model)
    lines = [f"# {cfg.name}", "", f"Built by `formula` from base model `{base}` in {len(chain) - 1} stage(s), "
             f"saved as {cfg.dtype} safetensors.", "", "## Stages", "",
             "| stage | method | adapter | data |", "|---|---|---|---|"]
    for s in chain:
        if "stage" not in s:
            continue
        a = s.get("adapter", {})
        adapter = f"LoRA r={a.get('r')} alpha={a.get('alpha')}" if a.get("type") == Lora.TAG else "full"
        d = s.get("data") or {}
        data = f"{d.get('kind')} `{d.get('name')}` ({d.get('split')})" + (" filtered" if d.get("where") else "")
        lines.append(f"| {s['stage']} | {s['method']} | {adapter} | {data} |")
    if metrics:
        lines += ["", "## Last stage", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(metrics.items())]
    lines += ["", "The lineage in full is in `lineage.json`; the chat template in `chat_template.jinja`.", ""]
    return "\n".join(lines)


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stage = Path(inputs["stage"])
    if not (stage / "config.json").is_file():
        fail(f"assemble `{cfg.name}`: stage `{cfg.stage}` left no model folder")
    tok = AutoTokenizer.from_pretrained(stage)
    model = AutoModelForCausalLM.from_pretrained(stage, dtype=getattr(torch, DTYPES[cfg.dtype]),
                                                 use_safetensors=True)
    model.save_pretrained(output, safe_serialization=True, max_shard_size=cfg.shard_size)
    tok.save_pretrained(output)
    for name in ("generation_config.json",):
        if (stage / name).exists():
            shutil.copy(stage / name, output / name)
    if not cfg.merge and (stage / "adapter").is_dir():
        shutil.copytree(stage / "adapter", output / "adapter")
    lineage = json.loads((stage / "lineage.json").read_text()) if (stage / "lineage.json").exists() else {}
    metrics = json.loads((stage / "metrics.json").read_text()) if (stage / "metrics.json").exists() else {}
    (output / "lineage.json").write_text(json.dumps(lineage, indent=1, sort_keys=True))
    (output / "README.md").write_text(card(cfg, lineage, metrics))
    saved = output / "chat_template.jinja"
    template = saved.read_text(encoding="utf-8") if saved.is_file() else None
    if template != tok.chat_template:
        fail(f"assemble `{cfg.name}`: {saved} does not hold the stage's chat template")
    (output / "metrics.json").write_text(json.dumps({"parameters": sum(p.numel() for p in model.parameters()),
                                                     "dtype": cfg.dtype,
                                                     "template_sha256": template_hash(template) if template else None}))


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

"""The tokenize step: a corpus through a model's tokenizer and chat template.

Each session is rendered with the template; the spans inside `{% generation %}` (assistant
output, end-of-turn token included) become the labels and everything else is masked (-100).
Rendering runs in batches across processes; each batch is encoded by the fast tokenizer at once,
with character offsets mapping tokens to the generation spans. Output: Arrow datasets `train/`
and `holdout/` (input_ids, labels, id, role, outcome, bead, truncated), `stats.json`.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from formula.runtime.step import fail, step_entry
from formula.runtime.templates import template_hash

LIBRARIES = ("tokenizers", "transformers", "datasets", "pyarrow")
BATCH = 256
IGNORE = -100


@dataclass
class Config:
    corpus: str = ""
    model: str = ""
    max_len: Optional[int] = None
    truncation: str = "end"      # end: keep the first max_len tokens; drop: drop the session
    workers: int = 0             # 0: one per core


_TOKENIZER = None


def _init(model_dir: str) -> None:
    global _TOKENIZER
    from transformers import AutoTokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _TOKENIZER = AutoTokenizer.from_pretrained(model_dir)


def encode_batch(sessions: list[dict], max_len: int | None, truncation: str, tok=None) -> list[dict]:
    """Sessions → examples with input_ids and labels masked to the assistant's tokens."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tok = tok or _TOKENIZER
    rendered, spans = render_jinja_template([s["messages"] for s in sessions], chat_template=tok.chat_template,
                                            return_assistant_tokens_mask=True, **tok.special_tokens_map)
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for s, ids, offsets, gen in zip(sessions, enc["input_ids"], enc["offset_mapping"], spans):
        labels = [IGNORE] * len(ids)
        gen = sorted(gen)
        j = 0
        for i, (start, end) in enumerate(offsets):
            while j < len(gen) and gen[j][1] <= start:
                j += 1
            if j < len(gen) and gen[j][0] <= start < gen[j][1]:
                labels[i] = ids[i]
        truncated = max_len is not None and len(ids) > max_len
        if truncated:
            if truncation == "drop":
                out.append({"id": s["id"], "dropped": "too_long"})
                continue
            ids, labels = ids[:max_len], labels[:max_len]
        if all(l == IGNORE for l in labels):
            out.append({"id": s["id"], "dropped": "no_assistant_tokens"})
            continue
        meta = s.get("meta", {})
        out.append({"id": s["id"], "input_ids": ids, "labels": labels, "truncated": truncated,
                    "role": meta.get("role") or "", "outcome": meta.get("outcome") or "",
                    "bead": meta.get("bead") or ""})
    return out


def _encode(args):
    return encode_batch(*args)


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    model_dir = str(inputs["model"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    if not tok.chat_template or "generation" not in tok.chat_template:
        fail(f"the chat template of model `{cfg.model}` has no {{% generation %}} markers, so "
             "assistant turns cannot be masked; use a named template (chatml) or add the markers")
    workers = cfg.workers or os.cpu_count() or 1
    stats = {"template_sha256": template_hash(tok.chat_template)}
    pool = ProcessPoolExecutor(workers, initializer=_init, initargs=(model_dir,)) if workers > 1 else None
    try:
        for split in ("train", "holdout"):
            with open(Path(inputs["corpus"]) / f"{split}.jsonl", encoding="utf-8") as fh:
                sessions = [json.loads(line) for line in fh if line.strip()]
            batches = [(sessions[i:i + BATCH], cfg.max_len, cfg.truncation)
                       for i in range(0, len(sessions), BATCH)]
            if pool is not None and len(batches) > 1:
                results = [r for part in pool.map(_encode, batches) for r in part]
            else:
                results = [r for b in batches for r in encode_batch(*b, tok=tok)]
            kept = [r for r in results if "dropped" not in r]
            dropped: dict[str, int] = {}
            for r in results:
                if "dropped" in r:
                    dropped[r["dropped"]] = dropped.get(r["dropped"], 0) + 1
            columns = ("id", "input_ids", "labels", "truncated", "role", "outcome", "bead")
            ds = datasets.Dataset.from_dict({c: [r[c] for r in kept] for c in columns})
            ds.save_to_disk(str(output / split))
            stats[split] = {"sessions": len(sessions), "examples": len(kept), "dropped": dropped,
                            "tokens": sum(len(r["input_ids"]) for r in kept),
                            "assistant_tokens": sum(sum(l != IGNORE for l in r["labels"]) for r in kept),
                            "truncated": sum(r["truncated"] for r in kept),
                            "max_tokens": max((len(r["input_ids"]) for r in kept), default=0)}
    finally:
        if pool is not None:
            pool.shutdown()
    if not stats["train"]["examples"]:
        fail(f"tokenizing corpus `{cfg.corpus}` left no training example: {stats['train']['dropped']}")
    (output / "stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True))
    (output / "metrics.json").write_text(json.dumps({
        "tokens_train": stats["train"]["tokens"], "assistant_tokens_train": stats["train"]["assistant_tokens"],
        "truncated_train": stats["train"]["truncated"], "template_sha256": stats["template_sha256"]}))


main = step_entry(Config, run)

if __name__ == "__main__":
    main()

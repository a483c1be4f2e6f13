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
from pathlib import Path
from typing import Any

from formula.contract.steps import TokenizeConfig
from formula.contract.templates import (TemplateRenderError, TokenizerFacts, analyse, problems, render_problem,
                                        template_error, template_hash)
from formula.runtime.step import fail, step_entry
from formula.runtime.steps import typed

LIBRARIES = ("tokenizers", "transformers", "datasets", "pyarrow")
BATCH = 256
IGNORE = -100


Config = TokenizeConfig  # the step's configuration: formula/contract/steps.py
_TOKENIZER = None


def _init(model_dir: str) -> None:
    global _TOKENIZER
    from transformers import AutoTokenizer

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _TOKENIZER = AutoTokenizer.from_pretrained(model_dir)


def encode_batch(sessions: list, max_len: int | None, truncation: str, tok=None) -> list[dict]:
    """Sessions (dicts, or their JSON lines) → examples whose labels keep only the tokens the
    assistant wrote; everything else is IGNORE. Arrays are int32 numpy, cheap to send back."""
    import numpy as np

    tok = tok or _TOKENIZER
    sessions = [json.loads(s) if isinstance(s, str) else s for s in sessions]
    # (texts, generation spans); transformers types the spans as strings, they are (start, end) lists
    result: Any = _render([s["messages"] for s in sessions], tok, [s["id"] for s in sessions])
    rendered, spans = result
    enc = tok._tokenizer.encode_batch(rendered, add_special_tokens=False)
    out = []
    for s, e, gen in zip(sessions, enc, spans):
        ids = np.asarray(e.ids, dtype=np.int32)
        starts = np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2)[:, 0]
        gen = np.asarray(sorted(gen), dtype=np.int64).reshape(-1, 2)
        k = np.searchsorted(gen[:, 0], starts, side="right") - 1
        inside = (k >= 0) & (starts < gen[np.maximum(k, 0), 1])
        labels = np.where(inside, ids, IGNORE).astype(np.int32)
        truncated = max_len is not None and len(ids) > max_len
        if truncated:
            if truncation == "drop":
                out.append({"id": s["id"], "dropped": "too_long"})
                continue
            ids, labels = ids[:max_len], labels[:max_len]
        if not inside[: len(ids)].any():
            out.append({"id": s["id"], "dropped": "no_assistant_tokens"})
            continue
        meta = s.get("meta", {})
        first = next((i for i, m in enumerate(s["messages"]) if m["role"] == "assistant"), 0)
        out.append({"id": s["id"], "input_ids": ids, "labels": labels, "truncated": truncated,
                    # What the assistant first answered, for evals that generate.
                    "prompt": json.dumps(s["messages"][:first], ensure_ascii=False),
                    "role": meta.get("role") or "", "outcome": meta.get("outcome") or "",
                    "bead": meta.get("bead") or ""})
    return out


def _render(chats: list, tok, ids: list[str]) -> Any:
    """The chats through the tokenizer's chat template; a template error becomes one line naming
    the template's line and the first session it failed on (TemplateRenderError, which the
    step turns into its failure), never a traceback."""
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(batch: list) -> Any:
        return render_jinja_template(batch, chat_template=tok.chat_template, return_assistant_tokens_mask=True,
                                     **tok.special_tokens_map)

    try:
        return render(chats)
    except Exception as exc:
        if template_error(exc) is None:
            raise
        for chat, sid in zip(chats, ids):  # which session: the batch failed, so one of them does
            try:
                render([chat])
            except Exception as one:
                what = template_error(one)
                if what is not None:
                    raise TemplateRenderError(f"session {sid}: {what}") from None
        raise TemplateRenderError(template_error(exc)) from None


def _encode(args):
    return encode_batch(*args)


def pack(examples: list[dict], pack_to: int) -> list[dict]:
    """Greedy packing in order: whole examples into rows of at most `pack_to` tokens; each row
    lists its examples' `seq_lengths` (TRL's padding-free format), so attention and positions
    can restart at every example."""
    import numpy as np

    rows: list[dict] = []
    current: list[dict] = []
    size = 0

    def flush():
        if current:
            rows.append({
                "id": ",".join(e["id"] for e in current),
                "input_ids": np.concatenate([e["input_ids"] for e in current]),
                "labels": np.concatenate([e["labels"] for e in current]),
                "seq_lengths": np.asarray([len(e["input_ids"]) for e in current], dtype=np.int32),
                "truncated": any(e["truncated"] for e in current), "role": "", "outcome": "", "bead": ""})

    for e in examples:
        n = len(e["input_ids"])
        if current and size + n > pack_to:
            flush()
            current, size = [], 0
        current.append(e)
        size += n
    flush()
    return rows


def _arrow(examples: list[dict]):
    """Examples → an Arrow table, list columns built from one flat array each."""
    import numpy as np
    import pyarrow as pa

    lengths = np.fromiter((len(e["input_ids"]) for e in examples), dtype=np.int64, count=len(examples))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = lambda key: pa.array(np.concatenate([e[key] for e in examples]) if examples else
                                np.zeros(0, np.int32))
    packed = {}
    if examples and "seq_lengths" in examples[0]:
        counts = np.fromiter((len(e["seq_lengths"]) for e in examples), dtype=np.int64, count=len(examples))
        packed["seq_lengths"] = pa.ListArray.from_arrays(
            pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)), flat("seq_lengths"))
    return pa.table({
        "id": pa.array([e["id"] for e in examples], pa.string()),
        "input_ids": pa.ListArray.from_arrays(offsets, flat("input_ids")),
        "labels": pa.ListArray.from_arrays(offsets, flat("labels")),
        **packed,
        "truncated": pa.array([bool(e["truncated"]) for e in examples], pa.bool_()),
        **{c: pa.array([e.get(c, "") for e in examples], pa.string())
           for c in ("role", "outcome", "bead", "prompt")},
    })


def template_problems(cfg: Config, tok) -> None:
    """The checks `formula check` makes when the model is local, made here for every model
    (a hub model's tokenizer is known only now), before anything trains on this data."""
    if not tok.chat_template:
        fail(f"model `{cfg.model}` has no chat template; name one in the formula (`template = chatml`)")
    facts = TokenizerFacts(f"model `{cfg.model}`", frozenset(tok.get_added_vocab()), tok.eos_token,
                           tok.chat_template)
    bad = render_problem(tok.chat_template)
    if bad is not None and bad.code != "template-render":
        fail(f"the chat template of model `{cfg.model}` (chat_template.jinja in its output"
             f"{f', line {bad.line}' if bad.line else ''}) {bad.describe()}")
    found = problems(analyse(tok.chat_template), facts, needs_masking=True)
    if found:
        fail("; ".join(f"{message} ({help_})" for _, message, help_ in found))


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    import datasets
    from transformers import AutoTokenizer

    model_dir = str(inputs["model"])
    tok = AutoTokenizer.from_pretrained(model_dir)
    template_problems(cfg, tok)
    workers = cfg.workers or os.cpu_count() or 1
    stats: dict[str, Any] = {"template_sha256": template_hash(tok.chat_template)}
    pool = ProcessPoolExecutor(workers, initializer=_init, initargs=(model_dir,)) if workers > 1 else None
    try:
        for split in ("train", "holdout"):
            with open(Path(inputs["corpus"]) / f"{split}.jsonl", encoding="utf-8") as fh:
                lines = [line for line in fh if line.strip()]
            batches = [(lines[i:i + BATCH], cfg.max_len, cfg.truncation) for i in range(0, len(lines), BATCH)]
            try:
                if pool is not None and len(batches) > 1:
                    results = [r for part in pool.map(_encode, batches) for r in part]
                else:
                    results = [r for b in batches for r in encode_batch(*b, tok=tok)]
            except TemplateRenderError as exc:
                fail(f"the chat template of model `{cfg.model}` (chat_template.jinja in its output) fails on "
                     f"{split} {exc}")
            kept = [r for r in results if "dropped" not in r]
            dropped: dict[str, int] = {}
            for r in results:
                if "dropped" in r:
                    dropped[r["dropped"]] = dropped.get(r["dropped"], 0) + 1
            rows = pack(kept, cfg.pack_to) if cfg.pack_to else kept
            datasets.Dataset(_arrow(rows)).save_to_disk(str(output / split))
            stats[split] = {"sessions": len(lines), "examples": len(kept), "dropped": dropped,
                            "tokens": int(sum(len(r["input_ids"]) for r in kept)),
                            "assistant_tokens": int(sum((r["labels"] != IGNORE).sum() for r in kept)),
                            "truncated": sum(r["truncated"] for r in kept),
                            "max_tokens": max((len(r["input_ids"]) for r in kept), default=0),
                            **({"packed_rows": len(rows)} if cfg.pack_to else {})}
    finally:
        if pool is not None:
            pool.shutdown()
    if not stats["train"]["examples"]:
        fail(f"tokenizing corpus `{cfg.corpus}` left no training example: {stats['train']['dropped']}")
    (output / "stats.json").write_text(json.dumps(stats, indent=1, sort_keys=True))
    (output / "metrics.json").write_text(json.dumps({
        "tokens_train": stats["train"]["tokens"], "assistant_tokens_train": stats["train"]["assistant_tokens"],
        "truncated_train": stats["train"]["truncated"], "template_sha256": stats["template_sha256"]}))


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

"""Tokens per second of the tokenize step against TRL's own SFT dataset preparation, on the same
data (at least 20 MB of sessions) with the same tokenizer and template, in one run.

    python bench/tokenize [MEGABYTES]     (default 24; a folder, so it does not shadow the
                                          standard library module `tokenize`)

Both sides produce input ids with assistant-only masks and use both cores: ours through its
worker processes, TRL through `dataset_num_proc=2` (its `SFTTrainer` prepares the dataset when it
is constructed; the time of constructing it on one example is subtracted). Target (issue 4):
ratio ≥ 1.0.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from result import result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent


def make_corpus(folder: Path, megabytes: int) -> int:
    """The example's scrubbed sessions, varied and repeated to the requested size."""
    from formula.contract.steps import GastownSource
    from formula.runtime.steps import corpus

    data = ROOT / "examples" / "data"
    src = GastownSource(input="source0", projects=str(data / "projects"),
                        beads=str(data / "beads" / "issues.jsonl"), town="/home/op/gt")
    base = folder / "base"
    base.mkdir()
    corpus.run(corpus.Config(name="s", sources=(src,), max_dropped=0.5),
               {"source0": Path(f"{data}/projects/**/*.jsonl"), "source0_beads": data / "beads" / "issues.jsonl"},
               base, folder / "w")
    sessions = [json.loads(l) for l in (base / "train.jsonl").read_text().splitlines()]
    rng = random.Random(3)
    words = " ".join(m["content"] for s in sessions for m in s["messages"] if m.get("content")).split()
    out = folder / "corpus"
    out.mkdir()
    size, n = 0, 0
    with open(out / "train.jsonl", "w") as fh:
        while size < megabytes * 1_000_000:
            s = json.loads(json.dumps(rng.choice(sessions)))
            s["id"] = f"s{n}"
            for m in s["messages"]:
                if m.get("content"):
                    m["content"] += " " + " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
            line = json.dumps(s) + "\n"
            fh.write(line)
            size += len(line)
            n += 1
    (out / "holdout.jsonl").write_text("")
    return n


def train_tokenizer(folder: Path) -> Path:
    from formula.contract.steps import NamedTemplate
    from formula.runtime.steps import tokenizer

    out = folder / "tok"
    out.mkdir()
    tokenizer.run(tokenizer.Config(vocab=2048, template=NamedTemplate("chatml")),
                  {"corpus": folder / "base"}, out, folder / "w")
    return out


def ours(folder: Path, tok_dir: Path) -> tuple[float, int]:
    from formula.runtime.steps import tokenize

    out = folder / "ours"
    out.mkdir()
    t = time.perf_counter()
    tokenize.run(tokenize.Config(corpus="bench", model="tiny", workers=2),
                 {"corpus": folder / "corpus", "model": tok_dir}, out, folder / "w")
    seconds = time.perf_counter() - t
    return seconds, json.loads((out / "stats.json").read_text())["train"]["tokens"]


def trl_side(folder: Path, tok_dir: Path) -> tuple[float, int]:
    import datasets
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    rows = [{"messages": json.loads(l)["messages"]} for l in (folder / "corpus" / "train.jsonl").open()]
    for r in rows:  # TRL expects `content` on every message
        for m in r["messages"]:
            m.setdefault("content", "")
    full = datasets.Dataset.from_list(rows)
    one = full.select(range(1))

    def prepare(ds):
        args = SFTConfig(output_dir=str(folder / "trl"), assistant_only_loss=True, dataset_num_proc=2,
                         max_length=None, packing=False, use_cpu=True, report_to="none")
        t = time.perf_counter()
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        return time.perf_counter() - t, trainer.train_dataset

    base_seconds, _ = prepare(one)
    seconds, prepared = prepare(full)
    tokens = sum(len(ids) for ids in prepared["input_ids"])
    return max(seconds - base_seconds, 1e-9), tokens


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 24
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n = make_corpus(folder, megabytes)
        tok_dir = train_tokenizer(folder)
        our_s, our_tokens = ours(folder, tok_dir)
        trl_s, trl_tokens = trl_side(folder, tok_dir)
    our_rate, trl_rate = our_tokens / our_s, trl_tokens / trl_s
    print(f"corpus: {megabytes} MB, {n} sessions; tokens: ours {our_tokens}, TRL {trl_tokens}"
          + ("" if our_tokens == trl_tokens else "  (token counts differ!)"))
    print(f"{'':<10}{'seconds':>10}{'tokens/s':>14}")
    print(f"{'formula':<10}{our_s:>10.2f}{our_rate:>14,.0f}")
    print(f"{'TRL':<10}{trl_s:>10.2f}{trl_rate:>14,.0f}")
    print(f"ratio (ours / TRL): {our_rate / trl_rate:.2f}  (target >= 1.0: "
          f"{'met' if our_rate / trl_rate >= 1.0 else 'NOT met'})")
    result("tokenize throughput", round(our_rate), "tokens/s", "ratio >= 1.0", round(trl_rate), "TRL SFT prep",
           round(our_rate / trl_rate, 3))


if __name__ == "__main__":
    main()

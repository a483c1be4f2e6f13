"""The train step's memory estimate against the peak it measures, on the CPU, for models made by
`init`: full fine-tuning and LoRA, several batch sizes and lengths, with and without gradient
checkpointing, f32 and bf16 weights.

    python bench/memory_estimate [--quick] [--only N,N]

Each configuration is one `formula build` of a generated formula (synthetic chat sessions of
150 to 4,500 tokens, a BPE tokenizer trained on them, an `init` llama) in one store, so the
corpus, tokenizer and model steps are built once per model. The train step runs three optimizer
steps; it estimates its peak before loading the weights (formula/runtime/memory.py) and
measures it while training: the resident set's high-water mark, reset after loading, less what
was resident before loading (run facts in the action record). The table prints the estimate,
the measured peak and their ratio; the target (issue 15) is every ratio within 0.75 to 1.25.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from result import result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent

MODELS = {
    "s": dict(hidden=256, layers=4, heads=4, kv_heads=2, ffn=704, vocab=2048),
    "m": dict(hidden=512, layers=4, heads=8, kv_heads=4, ffn=1408, vocab=4096),
    "l": dict(hidden=1024, layers=8, heads=16, kv_heads=8, ffn=2816, vocab=4096),
    "xl": dict(hidden=2048, layers=8, heads=16, kv_heads=8, ffn=5632, vocab=4096),
}
# (model, adapter, batch, length, gradient checkpointing, dtype)
CONFIGS = [
    ("s", "full", 4, 256, False, "f32"),
    ("s", "full", 8, 512, False, "f32"),
    ("s", "lora", 8, 512, False, "f32"),
    ("m", "full", 4, 1024, False, "f32"),
    ("m", "lora", 4, 1024, False, "f32"),
    ("m", "full", 2, 2048, False, "f32"),
    ("m", "full", 8, 512, True, "f32"),
    ("m", "lora", 8, 512, True, "f32"),
    ("m", "lora", 4, 1024, False, "bf16"),
    ("m", "full", 4, 512, False, "bf16"),
    # weights first: a LoRA stage over f32 and over bf16 weights (issue 15: bf16 ≤ 0.6× f32)
    ("l", "lora", 1, 256, True, "f32"),
    ("l", "lora", 1, 256, True, "bf16"),
    # the same on a model four times larger, where the weights outweigh the step's fixed costs
    ("xl", "lora", 1, 256, True, "f32"),
    ("xl", "lora", 1, 256, True, "bf16"),
]
QUICK = [0, 2, 3, 4, 6, 8]

FORMULA = """formula mem{i} {{
  description = "memory estimate bench, configuration {i}"
}}

model m{model} {{
  from      = init(llama, hidden = {hidden}, layers = {layers}, heads = {heads}, kv_heads = {kv_heads}, ffn = {ffn}, context = 4096, seed = 0)
  tokenizer = train_bpe(sessions, vocab = {vocab})
  template  = chatml
}}

corpus sessions {{
  source  = transcripts("data/*.jsonl", format = chat)
  scrub   = []
  max_len = 4096 tokens
}}

stage s {{
  method                 = sft
  model                  = m{model}
  data                   = sessions
  adapter                = {adapter}
  batch                  = {batch}
  max_len                = {length} tokens
  max_steps              = 3
  save_every             = 100
  log_every              = 1
  gradient_checkpointing = {ckpt}
  dtype                  = {dtype}
}}
"""


def sessions(folder: Path, n: int = 160, seed: int = 0) -> None:
    """Chat sessions of about 150 to 4,500 tokens (half of them longer than the longest length
    measured, so that a few steps meet it): user and assistant turns of random words."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7)))
             for _ in range(1500)]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "chats.jsonl", "w") as fh:
        for i in range(n):
            total, messages = rng.randint(100, 3600), []
            while total > 0:
                k = min(total, rng.randint(20, 200))
                for role in ("user", "assistant"):
                    messages.append({"role": role, "content": " ".join(rng.choice(words) for _ in range(k))})
                total -= 2 * k
            fh.write(json.dumps({"id": f"s{i}", "messages": messages}) + "\n")


def facts(store: Path, formula: str) -> dict:
    found = []
    for path in store.glob("actions/*/*.json"):
        record = json.loads(path.read_text())
        if record.get("step") == "train.s" and record.get("formula") == formula:
            found.append((record.get("started", 0), record))
    return max(found, key=lambda x: x[0])[1]["run"]["memory"]


def main() -> None:
    args = sys.argv[1:]
    picked = list(range(len(CONFIGS)))
    if "--quick" in args:
        picked = QUICK
    if "--only" in args:
        picked = [int(x) for x in args[args.index("--only") + 1].split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="memory-estimate-"))
    project, store = tmp / "p", tmp / "store"
    sessions(project / "data")
    env = {**os.environ, "FORMULA_HOME": str(store), "NO_COLOR": "1"}
    rows = []
    for i in picked:
        model, adapter, batch, length, ckpt, dtype = CONFIGS[i]
        text = FORMULA.format(i=i, model=model, **MODELS[model], batch=batch, length=length,
                              adapter="full" if adapter == "full" else "lora(r = 16)",
                              ckpt="true" if ckpt else "false", dtype=dtype)
        path = project / f"mem{i}.formula"
        path.write_text(text)
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "formula.cli", "build", path.name, "--plain", "-j", "2",
                               "--force", "train.s"], cwd=project, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"configuration {i} failed")
        m = facts(store, str(path))
        est, got = m["estimate"], m["measured_peak"]
        ratio = est / got
        label = (f"{model} {adapter:4} {dtype:4} batch {batch} × {length:4} "
                 f"{'ckpt' if ckpt else 'no ckpt'}")
        rows.append((i, label, est, got, ratio, m.get("parts", "")))
        print(f"{i:2}  {label:42}  estimate {est / 2**20:8.1f} MiB  measured {got / 2**20:8.1f} MiB  "
              f"ratio {ratio:5.2f}   (loading: {m['measured_load_peak'] / 2**20:.1f} MiB; "
              f"{time.time() - started:.0f}s)", flush=True)
    print()
    print("| # | configuration | estimate | measured | estimate / measured |")
    print("|---|---|---|---|---|")
    for i, label, est, got, ratio, _ in rows:
        print(f"| {i} | {label} | {est / 2**20:.1f} MiB | {got / 2**20:.1f} MiB | {ratio:.2f} |")
    worst = max(rows, key=lambda r: abs(r[4] - 1))
    print(f"\nworst: configuration {worst[0]}, ratio {worst[4]:.2f}; target: every ratio in 0.75 .. 1.25")
    result("memory estimate / measured peak, worst of %d CPU configurations" % len(rows), round(worst[4], 3),
           "ratio", "0.75 .. 1.25")
    # bf16 weights against f32 weights, everything else equal: no f32 copy of the weights anywhere
    measured = {CONFIGS[i]: got for i, _, _, got, _, _ in rows}
    for config, got in measured.items():
        f32 = measured.get(config[:5] + ("f32",))
        if config[5] == "bf16" and f32:
            result(f"train step peak over bf16 weights / over f32 weights ({config[0]} {config[1]})",
                   round(got / f32, 3), "ratio", "<= 0.6")


if __name__ == "__main__":
    main()

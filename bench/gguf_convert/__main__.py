"""Our HF → GGUF converter against llama.cpp's `convert_hf_to_gguf.py`, on the same locally made
llama of at least 100M parameters (f16 weights, f16 output), in one run; plus the I/O floor, a
plain copy of the same weight bytes.

    python bench/gguf_convert [LAYERS]      (default 10 layers of 1024 → 128M parameters)

llama.cpp's script is taken from the llama-cpp-python source distribution (pip's download, in a
temporary folder; never committed). It refuses any newly trained byte-level BPE tokenizer (it
hashes the ids of a fixed string against the tokenizers it knows), so it runs with that one
lookup answered "gpt-2", the pre-tokenizer our converter writes, and its sentencepiece attempt
answered "no tokenizer.model" (what it finds when sentencepiece is installed; it is not here);
everything else is its own.
Each side runs in a fresh process, three times after a warm-up round (the best wall time
counts: writes here vary by 3x from run to run); peak memory is the process's maximum RSS. Targets (issue 6):
wall ≤ 1.0× llama.cpp's, peak memory ≤ 0.5×, and within 1.5× of the plain copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from result import result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent

PATCH = """
import runpy, sys
vendor = sys.argv.pop(1)
sys.path[:0] = [vendor + "/gguf-py", vendor]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
def no_sentencepiece(self, *args, **kwargs):  # as with sentencepiece installed and no tokenizer.model
    raise FileNotFoundError("tokenizer.model")
base.TextModel._set_vocab_sentencepiece = no_sentencepiece
sys.argv[0] = vendor + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""

OURS = """
import sys, time
from pathlib import Path
from formula.runtime.export.convert import convert
import gguf, numpy  # imported before the clock starts: the in-process figure is the conversion
started = time.perf_counter()
convert(Path(sys.argv[1]), Path(sys.argv[2]), "f16")
print(time.perf_counter() - started)
"""


def make_model(folder: Path, layers: int) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from formula.runtime.steps.tokenizer import Config, run as train_tokenizer

    tok_dir = folder / "tok"
    tok_dir.mkdir(parents=True)
    corpus = folder / "corpus"
    corpus.mkdir()
    prompts = [json.loads(l)["prompt"] for l in (ROOT / "examples" / "evals" / "tiny.jsonl").read_text().splitlines()]
    (corpus / "train.jsonl").write_text("".join(
        json.dumps({"id": str(i), "messages": [{"role": "user", "content": f"{p} ({i})"},
                                               {"role": "assistant", "content": p[::-1]}]}) + "\n"
        for i, p in enumerate(prompts * 200)))
    train_tokenizer(Config(vocab=2048), {"corpus": corpus}, tok_dir, folder / "w")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=2816, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=2048,
                         tie_word_embeddings=False, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.float16)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    return sum(p.numel() for p in model.parameters())


def fetch_llama_cpp_script(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                    "-d", str(tmp), "llama-cpp-python==" + _installed_llama_cpp()], check=True)
    sdist = next(tmp.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and (
            m.name.endswith("convert_hf_to_gguf.py") or "/gguf-py/" in m.name or "/conversion/" in m.name)]
        tar.extractall(tmp, members=members, filter="data")
    return next(tmp.glob("llama_cpp_python-*/vendor/llama.cpp"))


def _installed_llama_cpp() -> str:
    from importlib.metadata import version

    return version("llama_cpp_python")


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float, float | None]:
    """(wall seconds, peak RSS in MB, the seconds the process printed, if it did) of one fresh
    process. Its peak RSS comes from wait4, so this process must stay small (see main)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = status
        out.seek(0), err.seek(0)
        if status != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{err.read().decode()[-2000:]}")
        printed = out.read().decode().split()
    try:
        inner = float(printed[-1])
    except (ValueError, IndexError):
        inner = None
    return wall, usage.ru_maxrss / 1024, inner


def warm_page_cache(path: Path) -> None:
    """Read the file once so every side starts with it in the page cache (fair, not cold)."""
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


COPY = """
import shutil, sys, time
started = time.perf_counter()
shutil.copyfile(sys.argv[1], sys.argv[2])
print(time.perf_counter() - started)
"""


def main() -> None:
    if sys.argv[1:2] == ["--make"]:
        print(make_model(Path(sys.argv[2]), int(sys.argv[3])))
        return
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as t:
        tmp = Path(t)
        # Made in a child process, so that this one stays small: a child's peak RSS counts
        # what it inherited at fork.
        made = subprocess.run([sys.executable, __file__, "--make", str(tmp), str(layers)],
                              capture_output=True, text=True, check=True)
        params = int(made.stdout.split()[-1])
        src = tmp / "model"
        weights = src / "model.safetensors"
        size = weights.stat().st_size
        print(f"model: llama, {params / 1e6:.0f}M parameters, f16 safetensors {size / 2**20:.0f} MiB")
        vendor = fetch_llama_cpp_script(tmp / "sdist")
        (tmp / "patched.py").write_text(PATCH)
        (tmp / "ours.py").write_text(OURS)
        (tmp / "plain_copy.py").write_text(COPY)
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": ""}
        runs = {"copy": [], "ours": [], "theirs": []}
        for round_ in range(4):  # round 0 warms the page cache and imports; the best of 1-3 counts
            warm_page_cache(weights)
            for f in ("copy.bin", "ours.gguf", "theirs.gguf"):
                (tmp / f).unlink(missing_ok=True)
            copy = measure([sys.executable, str(tmp / "plain_copy.py"), str(weights), str(tmp / "copy.bin")], env)
            ours = measure([sys.executable, str(tmp / "ours.py"), str(src), str(tmp / "ours.gguf")], env)
            theirs = measure([sys.executable, str(tmp / "patched.py"), str(vendor), str(src), "--outtype", "f16",
                              "--outfile", str(tmp / "theirs.gguf")], env)
            if round_:
                for k, v in (("copy", copy), ("ours", ours), ("theirs", theirs)):
                    runs[k].append(v)
        rows = {k: (min(r[0] for r in v), max(r[1] for r in v),
                    min((r[2] for r in v if r[2] is not None), default=None)) for k, v in runs.items()}
        check_same(tmp / "ours.gguf", tmp / "theirs.gguf")
        (ow, om, oi), (tw, tm, _), (cw, _, ci) = rows["ours"], rows["theirs"], rows["copy"]
        print(f"{'':24}{'wall s':>10}{'peak MB':>10}{'in-process s':>14}")
        print(f"{'formula (ours)':24}{ow:>10.2f}{om:>10.0f}{oi:>14.3f}")
        print(f"{'convert_hf_to_gguf.py':24}{tw:>10.2f}{tm:>10.0f}")
        print(f"{'plain copy (I/O floor)':24}{cw:>10.2f}{'':>10}{ci:>14.3f}   (shutil.copyfile of the weights)")
        print(f"wall ratio ours/llama.cpp {ow / tw:.2f} (target <= 1.0); peak memory ratio {om / tm:.2f} "
              f"(target <= 0.5)")
        print(f"ours / plain copy: {ow / cw:.2f} whole process, {oi / ci:.2f} conversion alone "
              f"(target <= 1.5; the difference is importing numpy and gguf, ~0.1 s)")
        result("GGUF f16 conversion wall", round(ow, 3), "s", "<= 1.0x", round(tw, 3), "convert_hf_to_gguf.py",
               round(ow / tw, 3))
        result("GGUF conversion peak memory", round(om), "MB", "<= 0.5x", round(tm), "convert_hf_to_gguf.py",
               round(om / tm, 3))
        result("GGUF conversion vs plain copy", round(oi, 3), "s", "<= 1.5x", round(ci, 3), "shutil.copyfile",
               round(oi / ci, 3))


def check_same(ours: Path, theirs: Path) -> None:
    """Both files must hold the same tensors (names, types, bytes) to compare fairly."""
    import gguf
    import numpy as np

    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    assert set(a) == set(b), set(a) ^ set(b)
    differ = [n for n in a if a[n].tensor_type != b[n].tensor_type or not np.array_equal(a[n].data, b[n].data)]
    print(f"same tensors in both files: {len(a)} tensors, {len(differ)} differ" + (f" ({differ[:3]})" if differ else ""))


if __name__ == "__main__":
    main()

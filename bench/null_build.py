"""No-op rebuild of a six-step pipeline over a 50 MB input: formula against DVC, in one run.

    python bench/null_build.py            (installs DVC into a venv of its own the first time)

Both tools first build the pipeline, then rebuild with nothing changed; the figure is the
median wall time of the no-op rebuild, as a user runs it (a fresh process each time). Our
pipeline is a formula lowered to six steps (corpus, model, tokenize, train, assemble, gguf)
with trivial step implementations (bench/null_steps); DVC's is a dvc.yaml of six stages with
the same dependency chain and the same 50 MB file as the first input.

Target (issue 3): under 0.25 s, and at most 0.4× DVC's no-op `dvc repro`.

A no-op rebuild checks every cached output against its seal before using it (issue 14: by stat,
no file read unless its stat changed). The bench also times that check alone: over the six
outputs of this pipeline, and over a model-sized output (16 files, 512 MiB) against rehashing it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from result import result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNS = 9
DVC_VENV = Path(os.environ.get("FORMULA_BENCH_DVC_VENV", Path(tempfile.gettempdir()) / "formula-bench-dvc"))

FORMULA = '''formula null {
}

model base {
  from = hub("bench/none")
}

corpus data {
  source = transcripts("data/*.jsonl", format = text)
}

stage sft {
  method = sft
  model  = base
  data   = data
}

assemble merged {
  from = sft
}

export gguf {
  from   = merged
  quants = [f16]
}
'''

STAGES = ["corpus", "model", "tokenize", "train", "assemble", "gguf"]
STEP_PY = "import hashlib, sys\nh = hashlib.blake2b()\nfor p in sys.argv[1:-1]:\n    h.update(open(p, 'rb').read())\nopen(sys.argv[-1], 'w').write(h.hexdigest())\n"


def dvc_yaml() -> str:
    lines = ["stages:"]
    prev = "data/big.jsonl"
    for s in STAGES:
        lines += [f"  {s}:", f"    cmd: python step.py {prev} {s}.out", "    deps:",
                  "    - step.py", f"    - {prev}", "    outs:", f"    - {s}.out"]
        prev = f"{s}.out"
    return "\n".join(lines) + "\n"


def median_wall(cmd: list[str], cwd: Path, env: dict) -> float:
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return statistics.median(times)


def ensure_dvc() -> Path:
    dvc = DVC_VENV / "bin" / "dvc"
    if not dvc.exists():
        print(f"installing DVC into {DVC_VENV} (once)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(DVC_VENV)], check=True)
        subprocess.run([str(DVC_VENV / "bin" / "pip"), "install", "-q", "dvc"], check=True)
    return dvc


def main() -> None:
    dvc = ensure_dvc()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        rng = random.Random(7)
        data = bytes(rng.getrandbits(8) for _ in range(1 << 20)) * 50  # 50 MiB
        for folder in ("ours", "dvc"):
            (base / folder / "data").mkdir(parents=True)
            (base / folder / "data" / "big.jsonl").write_bytes(data)

        ours = base / "ours"
        (ours / "pyproject.toml").write_text("")
        (ours / "null.formula").write_text(FORMULA)
        (ours / "null.formula.lock").write_text(json.dumps({"format": 1, "models": [{  # as `formula lock` pins it
            "repo": "bench/none", "revision": "main", "commit": "0" * 40, "files": [{"name": "model.safetensors"}]}]}))
        env = {**os.environ, "FORMULA_STEPS": "null_steps", "PYTHONPATH": str(ROOT / "bench"), "NO_COLOR": "1"}
        env.pop("FORMULA_HOME", None)
        # As installed: byte-code caches on (this workplace's shells set PYTHONDONTWRITEBYTECODE).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        beside = Path(sys.executable).with_name("formula")  # this interpreter's, not whatever PATH has
        formula = str(beside) if beside.exists() else shutil.which("formula") or "formula"
        cmd = [formula, "build", "null.formula", "--plain"]
        t = time.perf_counter()
        first = subprocess.run(cmd, cwd=ours, env=env, capture_output=True, text=True)
        cold_ours = time.perf_counter() - t
        if first.returncode != 0 or "6 built" not in first.stderr:
            raise SystemExit(f"formula build failed:\n{first.stderr}")
        noop_ours = median_wall(cmd, ours, env)
        check_six, check_big, rehash_big, big_mib = integrity_costs(ours / ".formula", base / "big")

        d = base / "dvc"
        (d / "step.py").write_text(STEP_PY)
        (d / "dvc.yaml").write_text(dvc_yaml())
        denv = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        denv.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=d, env=denv, check=True)
        t = time.perf_counter()
        subprocess.run([str(dvc), "repro", "-q"], cwd=d, env=denv, check=True, capture_output=True)
        cold_dvc = time.perf_counter() - t
        noop_dvc = median_wall([str(dvc), "repro", "-q"], d, denv)

    ratio = noop_ours / noop_dvc
    print(f"{'figure':<40} {'formula':>9} {'dvc':>9} {'ratio':>7}  target")
    print(f"{'cold build, 6 steps over 50 MiB':<40} {cold_ours:>8.2f}s {cold_dvc:>8.2f}s "
          f"{cold_ours / cold_dvc:>7.2f}  -")
    print(f"{'no-op rebuild (median of %d)' % RUNS:<40} {noop_ours:>8.3f}s {noop_dvc:>8.3f}s "
          f"{ratio:>7.2f}  < 0.25 s and <= 0.40x: "
          f"{'met' if noop_ours < 0.25 and ratio <= 0.4 else 'NOT met'}")
    print(f"{'  of which: seal check of the 6 outputs':<40} {check_six * 1e3:>7.2f}ms")
    print(f"{'seal check of a %d MiB, 16-file output' % big_mib:<40} {check_big * 1e3:>7.2f}ms "
          f"(rehashing it: {rehash_big * 1e3:.0f} ms)")
    result("no-op rebuild, 6 steps over 50 MiB", round(noop_ours, 3), "s", "< 0.25 s, <= 0.40x",
           round(noop_dvc, 3), "dvc repro", round(ratio, 3))
    result(f"seal check of a {big_mib} MiB output (no-op rebuild's integrity check)", round(check_big * 1e3, 2),
           "ms", "< 5 ms", round(rehash_big * 1e3, 1), "rehash", round(check_big / rehash_big, 4))


def integrity_costs(store_root: Path, scratch: Path) -> tuple[float, float, float, int]:
    """Seconds to check the six stored outputs (what each no-op rebuild adds), to check a big
    sealed output, and to rehash that one (what `formula verify` does)."""
    sys.path.insert(0, str(ROOT))
    from formula.runtime.hashing import seal
    from formula.runtime.store import Store

    store = Store(store_root)
    digests = [p.name for p in (store_root / "objects").glob("*/*")]

    def best(fn, n=20):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    check_six = best(lambda: [store.damage(d) for d in digests])
    out = scratch / "out"
    out.mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    for i in range(16):
        with open(out / f"model-{i:05d}-of-00016.safetensors", "wb") as fh:
            for _ in range(32):
                fh.write(chunk)
    digest, _ = store.commit_output(out)
    check_big = best(lambda: store.damage(digest))
    rehash_big = best(lambda: seal(store.object_path(digest)), n=3)
    return check_six, check_big, rehash_big, 16 * 32


if __name__ == "__main__":
    main()

"""The corpus step and `formula data` on a real-format Claude Code projects folder of ~100 MB.

    python bench/corpus [MEGABYTES]     (default 100)

The data is the example's generator at scale (`examples/data/generate.py OUT --scale N`): Claude
Code 2.1/2.0 files with subagents, compactions, rewinds, parallel calls, meta events, and a beads
export. Figures: the wall time of `formula data` (target: under 30 s for 100 MB on 2 cores), and
the corpus step's throughput in MB/s against the floor any reader pays, parsing every line with
`json.loads` (the ratio says how much the tree walk, scrubbing, gates and linking cost on top).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from result import result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
SCALE_PER_MB = 1.0 / 0.75  # the generator writes about 0.75 MB of transcripts per scale unit


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*.jsonl")) / 2**20


def main() -> None:
    megabytes = float(sys.argv[1]) if len(sys.argv) > 1 else 100.0
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        scale = max(1, round(megabytes * SCALE_PER_MB))
        subprocess.run([sys.executable, str(ROOT / "examples" / "data" / "generate.py"), str(data),
                        "--scale", str(scale)], check=True, capture_output=True)
        size = folder_mb(data / "projects")
        files = sorted(str(p) for p in (data / "projects").rglob("*.jsonl"))
        formula = Path(tmp) / "bench.formula"
        formula.write_text(
            "formula bench {}\n"
            "corpus sessions {\n"
            f'  source      = gastown("{data}/projects", beads = "{data}/beads/issues.jsonl", town = "/home/op/gt")\n'
            "  scrub       = [secrets, pii]\n"
            "  dedup       = exact\n"
            "  holdout     = 5%\n"
            "  max_dropped = 50%\n"
            "}\n")
        print(f"{len(files)} transcript files, {size:.1f} MB (generator scale {scale})")

        started = time.perf_counter()
        for path in files:  # the floor: every line parsed once
            with open(path, "rb") as fh:
                for line in fh:
                    json.loads(line)
        floor = time.perf_counter() - started

        env = {**os.environ, "FORMULA_HOME": str(Path(tmp) / "store")}
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "formula.cli", "data", str(formula), "--json"],
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            raise SystemExit(1)
        report = json.loads(proc.stdout)[0]
        step = report["seconds"]
        print(f"formula data: {wall:.1f} s wall ({step:.1f} s reading, scrubbing, gating, linking); "
              f"{report['read']} examples, {report['kept']} kept, links {report['links'].get('links')}")
        print(f"json.loads over every line: {floor:.1f} s")
        result("formula data, real-format folder", round(wall, 2), "s", "< 30 s for 100 MB")
        result("corpus step throughput", round(size / step, 2), "MB/s", "(reported)",
               peer=round(size / floor, 2), peer_name="json.loads of every line", ratio=round(floor / step, 3))


if __name__ == "__main__":
    main()

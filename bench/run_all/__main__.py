"""Every benchmark in bench/, one after another, and one table of what they measured.

    python bench/run_all [--quick]     (--quick: smaller inputs where a benchmark takes a size)

Each benchmark prints its own detail and `RESULT {...}` lines (bench/result.py); this collects
those into: figure, our value, the peer's value, the ratio, the target. A benchmark that fails
is listed as failed, and the others still run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
# (script, arguments, arguments with --quick)
RUNS = [
    ("check_speed.py", [], []),
    ("hashing.py", ["2"], ["0.5"]),
    ("null_build.py", [], []),
    ("scrub_false_positives.py", [], []),
    ("corpus", ["100"], ["20"]),
    ("tokenize", ["24"], ["20"]),
    ("gguf_convert", [], []),
    ("train_overhead", [], ["4"]),
    ("memory_estimate", [], ["--quick"]),
    ("hub_fetch", [], ["50"]),
    ("remote_cache", ["256"], ["64"]),
]


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    rows, failed = [], []
    for script, args, quick_args in RUNS:
        cmd = [sys.executable, str(BENCH / script), *(quick_args if quick else args)]
        print(f"== {script} {' '.join(cmd[2:])}", flush=True)
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                rows.append(json.loads(line[len("RESULT "):]))
            else:
                print("   " + line)
        print(f"   ({time.perf_counter() - started:.0f}s)", flush=True)
        if proc.returncode != 0:
            failed.append(script)
            print("   FAILED:\n" + "\n".join("   " + l for l in proc.stderr.splitlines()[-15:]))
    print()
    head = f"{'figure':<38}{'ours':>22}{'peer':>22}{'ratio':>7}  {'target':<20}peer"
    print(head)
    print("-" * len(head))
    for r in rows:
        ours = f"{r['ours']:g} {r['unit']}"
        peer = f"{r['peer']:g} {r['unit']}" if r.get("peer") is not None else "-"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
        print(f"{r['figure']:<38}{ours:>22}{peer:>22}{ratio:>7}  {r['target']:<20}{r.get('peer_name') or ''}")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()

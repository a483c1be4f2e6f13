import glob
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from formula.runtime.step import run_facts, step_entry

# Config keys that do not change what a step produces (so changing them shows early cutoff).
COSMETIC = {"log_every", "save_every"}


def content_digest(path: Path) -> str:
    h = hashlib.sha256()
    if any(ch in str(path) for ch in "*?["):
        for f in sorted(glob.glob(str(path), recursive=True)):
            h.update(os.path.basename(f).encode())
            h.update(Path(f).read_bytes())
        return h.hexdigest()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if not path.exists():
        return "missing"
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def make(kind: str):
    def run(config: dict, inputs: dict, output: Path, work: Path) -> None:
        upper = kind.upper()
        marker = os.environ.get("FAKE_RUNS_LOG")
        if marker:
            with open(marker, "a") as fh:
                fh.write(f"{config.get('name', kind)}:{kind}\n")
        pidfile = os.environ.get(f"FAKE_PIDFILE_{upper}")
        if pidfile:
            Path(pidfile).write_text(str(os.getpid()))
        for i in range(int(os.environ.get(f"FAKE_LOG_LINES_{upper}", "0"))):
            print(f"fake {kind} log line {i:05d} " + "x" * 60, flush=True)
        if os.environ.get(f"FAKE_FAIL_{upper}"):
            print(f"fake {kind} step failing on purpose", file=sys.stderr)
            raise SystemExit(4)
        if os.environ.get(f"FAKE_WRITE_INPUT_{upper}"):  # as a library's cache file would
            for path in inputs.values():
                if Path(path).is_dir():
                    (Path(path) / "cache-1234.arrow").write_text("cache")
        slow = float(os.environ.get(f"FAKE_SLEEP_{upper}", "0"))
        # A step that checkpoints: resumes from work/progress if a previous run was killed.
        progress = work / "progress"
        done = int(progress.read_text()) if progress.exists() else 0
        steps = 10
        for i in range(done, steps):
            time.sleep(slow / steps)
            progress.write_text(str(i + 1))
        (output / "result.json").write_text(json.dumps({
            "kind": kind,
            "config": {k: v for k, v in config.items() if k not in COSMETIC},
            "inputs": {k: content_digest(Path(v)) for k, v in sorted(inputs.items())},
            "resumed_from": done,
        }, sort_keys=True, indent=1))
        (output / "metrics.json").write_text(json.dumps({"fake_metric": 1.0}))
        # Facts of this run go to the action record, never into the output.
        run_facts(finished_at=time.time(), pid=os.getpid(), resumed=done > 0)
        fill = os.environ.get(f"FAKE_FILL_DISK_{upper}")  # `output` or `work`: write there until full
        if fill:
            block = b"\0" * (1 << 16)
            try:
                with open((output if fill == "output" else work) / "filler.bin", "wb") as fh:
                    while True:
                        fh.write(block)
                        fh.flush()
            except OSError:
                for i in range(int(os.environ.get(f"FAKE_LOG_LINES_AFTER_{upper}", "0"))):
                    print(f"fake {kind} after the disk filled {i:05d} " + "y" * 60, flush=True)
                raise

    return step_entry(None, run)

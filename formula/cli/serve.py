"""`formula serve`: a built GGUF behind llama-cpp-python's OpenAI-compatible server.

The server is llama-cpp-python's own; the chat template is the one embedded in the GGUF (the
formula's, byte for byte, checked when the file was built), which the server uses when it is
not told a chat format."""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
from pathlib import Path


def choose_target(steps: dict[str, str], target: str | None) -> tuple[str | None, list[str]]:
    """The GGUF step to serve: `--target` as a step name, a glob, or a quant (`q8_0`);
    otherwise the most compressed quant of the last export."""
    ggufs = sorted(s for s in steps if s.startswith("gguf."))
    if not ggufs:
        return None, ggufs
    if target is None:
        order = ("q8_0", "q6_k", "q5_k_m", "q4_k_m")
        by_quant = {s.rsplit(".", 1)[1]: s for s in ggufs}
        return next((by_quant[q] for q in order if q in by_quant), ggufs[-1]), ggufs
    matches = [s for s in ggufs if s == target or fnmatch.fnmatch(s, target)
               or s.endswith("." + target) or s == f"gguf.{target}"]
    return (matches[0] if len(matches) == 1 else None), ggufs


def serve(gguf: Path, host: str, port: int, n_ctx: int = 0) -> int:
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", host,
           "--port", str(port), "--n_ctx", str(n_ctx), "--type_k", "0", "--type_v", "0"]
    print(f"serving {gguf} on http://{host}:{port}/v1 (OpenAI API); Ctrl-C stops it", file=sys.stderr)
    from formula.runtime.step import kill_on_parent_death

    # The server goes when this command goes, however it goes (Ctrl-C, kill, its shell closing).
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=kill_on_parent_death)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return 0

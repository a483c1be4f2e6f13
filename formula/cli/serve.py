"""`formula serve`: a built export behind an OpenAI-compatible server.

Which steps can be served, and with what, is their export format's (`formula/formats/`): a
GGUF is served by llama-cpp-python's own server, with the chat template embedded in the file
(the formula's, byte for byte, checked when the file was built), which the server uses when it
is not told a chat format."""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
from pathlib import Path

from formula.formats import FORMATS, ExportFormat


def _format(step: str) -> ExportFormat | None:
    fmt = FORMATS.get(step.split(".", 1)[0])
    return fmt if fmt is not None and fmt.serve is not None else None


def choose_target(steps: dict[str, str], target: str | None) -> tuple[str | None, list[str]]:
    """The step to serve: `--target` as a step name, a glob, or a quant (`q8_0`); otherwise the
    quant its format prefers among those of the last export."""
    servable = sorted(s for s in steps if _format(s) is not None)
    if not servable:
        return None, servable
    if target is None:
        by_quant = {s.rsplit(".", 1)[1]: s for s in servable}
        fmt = _format(servable[-1])
        order = fmt.serve_first if fmt else ()
        return next((by_quant[q] for q in order if q in by_quant), servable[-1]), servable
    matches = [s for s in servable if s == target or fnmatch.fnmatch(s, target)
               or s.endswith("." + target) or any(s == f"{f}.{target}" for f in FORMATS)]
    return (matches[0] if len(matches) == 1 else None), servable


def artifact(step: str) -> str:
    """The file a servable step writes into its output folder."""
    fmt = _format(step)
    assert fmt is not None, step
    return fmt.file


def serve(path: Path, host: str, port: int, n_ctx: int = 0) -> int:
    fmt = next((f for f in FORMATS.values() if f.file == path.name and f.serve is not None), None)
    if fmt is None or fmt.serve is None:
        print(f"formula serve: no export format serves {path.name}", file=sys.stderr)
        return 2
    cmd = fmt.serve(path, host, port, n_ctx)
    print(f"serving {path} on http://{host}:{port}/v1 (OpenAI API); Ctrl-C stops it", file=sys.stderr)
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

"""`formula serve`: a built export behind an OpenAI-compatible server.

Which steps can be served, and with what, is their export format's (`formula/formats/`): a
GGUF is served by llama.cpp's llama-server with `--jinja`, which renders the chat template
embedded in the file (the formula's, byte for byte, checked when the file was built) and parses
the model's `<tool_call>` blocks into OpenAI `tool_calls`, so an agent can use it (docs/serve.md).
"""

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


def serve(path: Path, host: str, port: int, name: str, backend: str | None = None) -> int:
    """Run the server for `path` as `name` until this command ends; its exit status."""
    fmt = next((f for f in FORMATS.values() if f.file == path.name and f.serve is not None), None)
    if fmt is None or fmt.serve is None:
        print(f"formula serve: no export format serves {path.name}", file=sys.stderr)
        return 2
    backend = backend or fmt.serve_backends[0]
    if backend not in fmt.serve_backends:
        print(f"formula serve: {fmt.name} is served by {' or '.join(fmt.serve_backends)}, not `{backend}`",
              file=sys.stderr)
        return 2
    from formula.runtime.export import llama_server
    from formula.runtime.step import kill_on_parent_death

    try:
        cmd = fmt.serve(path, host, port, name, backend, llama_server.program)
    except llama_server.Unavailable as exc:
        others = [b for b in fmt.serve_backends if b != backend]
        print(f"formula serve: {exc}" + (f"\n(or `--backend {others[0]}`, which needs nothing built but "
                                         "returns tool calls only when a request forces one)" if others else ""),
              file=sys.stderr)
        return 1
    print(f"serving {path} as model `{name}` on http://{host}:{port}/v1 (OpenAI API; {backend}); "
          "Ctrl-C stops it", file=sys.stderr)
    # The server goes when this command goes, however it goes (Ctrl-C, kill, its shell closing).
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=kill_on_parent_death)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        return 0

"""A cache of compiled step graphs, so an unchanged formula is not compiled again.

Keyed by the compiler's own code, the formula's path and the overrides; valid while every file
the compile read (the formula, its parents and imports, including the ones it looked for and
did not find) still has the same content. A no-op `formula build` then skips importing the
compiler altogether.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from formula.contract.graph import FileInput, Graph, StepSpec, TaggedInput
from formula.runtime.hashing import digest_bytes
from formula.runtime.store import write_json_atomic

CACHE_FORMAT = 1


def _compiler_digest() -> str:
    """The code that compiling runs: the compiler, and what it reads below it (the contract, the
    training methods, the export formats), every file, so a new method module counts too."""
    root = Path(__file__).resolve().parent.parent
    parts = []
    for package in ("compiler", "contract", "methods", "formats"):
        for f in sorted((root / package).rglob("*")):
            if f.suffix in (".py", ".lark") and "__pycache__" not in f.parts:
                parts.append(str(f.relative_to(root)).encode() + b"\0" + digest_bytes(f.read_bytes()).encode())
    return digest_bytes(b"\n".join(parts))


def _file_digest(path: str) -> str:
    try:
        return digest_bytes(Path(path).read_bytes())
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return "missing"


def _entry_path(store_root: Path, formula: str, overrides: list[str]) -> Path:
    # HOME: formulas may name `~/...`, which compiles to an absolute path.
    key = digest_bytes(json.dumps([CACHE_FORMAT, _compiler_digest(), os.path.abspath(formula),
                                   overrides, os.path.expanduser("~")]).encode())
    return store_root / "graphs" / f"{key}.json"


def load(store_root: Path, formula: str, overrides: list[str]) -> tuple[str, Graph, str] | None:
    """(plan name, graph, warnings as rendered) if nothing the compile read has changed."""
    path = _entry_path(store_root, formula, overrides)
    try:
        entry = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if any(_file_digest(p) != d for p, d in entry["files"].items()):
        return None
    steps = {s["name"]: StepSpec(s["name"], s["kind"], s["config"], s["deps"],
                                 {k: FileInput(**v) for k, v in s["files"].items()}, s["origin"],
                                 {k: TaggedInput(**v) for k, v in s.get("tagged", {}).items()},
                                 s.get("resources", {}))
             for s in entry["steps"]}
    return entry["name"], Graph(steps), entry["warnings"]


def save(store_root: Path, formula: str, overrides: list[str], files: list[str], name: str,
         graph: Graph, warnings: str) -> None:
    steps = [{"name": s.name, "kind": s.kind, "config": s.config, "deps": s.deps,
              "files": {k: {"pattern": v.pattern, "is_glob": v.is_glob} for k, v in s.files.items()},
              "origin": s.origin,
              "tagged": {k: {"tag": v.tag, "step": v.step} for k, v in s.tagged.items()},
              "resources": s.resources}
             for s in graph.steps.values()]
    write_json_atomic(_entry_path(store_root, formula, overrides), {
        "files": {p: _file_digest(p) for p in sorted(set(files))}, "name": name,
        "steps": steps, "warnings": warnings})

"""A step's code identity: its whole module, the project modules it imports (followed
statically, so nothing is imported), the step harness, and the versions of the libraries it
names in `LIBRARIES`. Editing a helper a step calls changes the step's key.

A package that finds its modules at run time (the training methods, the export formats) says
so with `DISCOVERED = True` in its `__init__.py`: a step that imports it has every module in its
folder as code, since any of them may run.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from functools import lru_cache

from .hashing import digest_bytes

HARNESS = "formula.runtime.step"


@lru_cache(maxsize=None)
def _module_file(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return spec.origin


@lru_cache(maxsize=None)
def _parsed(path: str) -> tuple[bytes, tuple[str, ...], tuple[str, ...]]:
    """Source bytes, imported module names (absolute), and LIBRARIES of one file; a package
    that discovers its modules imports them all."""
    data = open(path, "rb").read()
    tree = ast.parse(data, filename=path)
    imports: list[str] = []
    libs: list[str] = []
    package = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = package or _package_of(path)
                base = _resolve_relative(package, node.module, node.level)
            else:
                base = node.module or ""
            imports.append(base)
            imports.extend(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LIBRARIES"
                                                  for t in node.targets):
            try:
                libs.extend(ast.literal_eval(node.value))
            except ValueError:
                pass
        elif (isinstance(node, ast.Assign) and os.path.basename(path) == "__init__.py"
              and any(isinstance(t, ast.Name) and t.id == "DISCOVERED" for t in node.targets)):
            package = package or _package_of(path)
            folder = os.path.dirname(path)
            imports.extend(f"{package}.{f[:-3]}" for f in sorted(os.listdir(folder))
                           if f.endswith(".py") and f != "__init__.py")
    return data, tuple(imports), tuple(libs)


def _package_of(path: str) -> str:
    # Only needed for relative imports and discovered modules inside the formula package.
    parts = []
    folder = os.path.dirname(os.path.abspath(path))
    while os.path.exists(os.path.join(folder, "__init__.py")):
        parts.append(os.path.basename(folder))
        folder = os.path.dirname(folder)
    return ".".join(reversed(parts))


def _resolve_relative(package: str, module: str | None, level: int) -> str:
    parts = package.split(".")
    base = parts[: len(parts) - level + 1]
    return ".".join(base + ([module] if module else []))


@lru_cache(maxsize=None)
def code_identity(module: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """(digest of the step's code, (library, version) pairs)."""
    roots = {module.split(".")[0], "formula"}
    seen: dict[str, bytes] = {}
    libs: set[str] = set()
    stack = [module, HARNESS]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        data, imports, module_libs = _parsed(path)
        seen[name] = data
        libs.update(module_libs)
        stack.extend(i for i in imports if i.split(".")[0] in roots)
    digest = digest_bytes(b"".join(n.encode() + b"\0" + digest_bytes(d).encode() + b"\n"
                                   for n, d in sorted(seen.items())))
    return digest, tuple(sorted((lib, _version(lib)) for lib in libs))


@lru_cache(maxsize=None)
def _version(dist: str) -> str:
    """A distribution's version from its `.dist-info` folder name: what importlib.metadata
    finds, without its import cost on every build."""
    import re
    import sys

    want = re.sub(r"[-_.]+", "_", dist).lower()
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                stem = name[: -len(".dist-info")]
                project, _, version = stem.rpartition("-")
                if re.sub(r"[-_.]+", "_", project).lower() == want:
                    return version
    return "absent"

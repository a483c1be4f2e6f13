"""The package's layers, read statically from every import (those inside functions too):

    formula.contract                  imports nothing of formula but itself, and only the stdlib
    formula.methods, formula.formats  import formula.contract (ML libraries inside functions only)
    formula.compiler                  imports those, never formula.runtime or formula.cli
    formula.runtime                   imports those, never formula.compiler or formula.cli
    formula.cli                       may import anything

and no module imports itself back through others (no cycle). docs/architecture.md explains why.
"""

import ast
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "formula"
ALLOWED = {
    "contract": {"contract"},
    "methods": {"contract", "methods"},
    "formats": {"contract", "formats"},
    "compiler": {"contract", "methods", "formats", "compiler"},
    "runtime": {"contract", "methods", "formats", "runtime"},
    "cli": {"contract", "methods", "formats", "compiler", "runtime", "cli"},
}
# Top-level (module-load) imports these layers may make beyond the standard library.
THIRD_PARTY_AT_LOAD = {"contract": set(), "methods": set(), "formats": set(), "compiler": {"lark"}}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, top_level_only: bool = False) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found += [f"{base}.{a.name}" for a in node.names] + [base]
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {i for i in imports(name, path) if i in mods and i != name} for name, path in mods.items()}


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_each_layer_imports_only_the_layers_below_it():
    wrong = [f"{m} imports {i}" for m, deps in graph().items() for i in deps
             if layer(m) in ALLOWED and layer(i) not in ALLOWED[layer(m)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_in_the_package():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(start: str) -> None:
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, pending = stack[-1]
            for nxt in pending:
                if state.get(nxt) == 1:
                    cycles.append(path[path.index(nxt):] + [nxt])
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(sorted(edges[nxt]))))
                    path.append(nxt)
                    break
            else:
                state[node] = 2
                stack.pop()
                path.pop()

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(" → ".join(c) for c in cycles)


def test_the_lower_layers_load_no_ml_library():
    mods = modules()
    wrong = []
    for name, path in mods.items():
        allowed = THIRD_PARTY_AT_LOAD.get(layer(name))
        if allowed is None:
            continue
        for imp in imports(name, path, top_level_only=True):
            top = imp.split(".")[0]
            if top and top != "formula" and top not in sys.stdlib_module_names and top not in allowed:
                wrong.append(f"{name} imports {imp} when it loads")
    assert not wrong, "\n".join(wrong)

"""The step graph: what to run, with which configuration, on which inputs.

The compiler's lowering (`formula/compiler/lower.py`) makes it; the runtime's build
(`formula/runtime/build.py`) decides what runs and an executor runs it. No caching here, no
execution, no machine learning: records and the few pure algorithms every side needs (order,
closure, selection by name, drawings).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class FileInput:
    """Data on disk that a step reads: a glob (`**` recursive) or one file or folder."""

    pattern: str
    is_glob: bool = True


@dataclass(frozen=True)
class TaggedInput:
    """The output of step `step` in the build named `tag` (`formula tag`): an earlier build's
    artifact, found in the store when the step is keyed, and keyed by its digest."""

    tag: str
    step: str


@dataclass(frozen=True)
class StepSpec:
    name: str                      # unique in the graph: "train.sft", "gguf.gguf.q8_0"
    kind: str                      # selects the implementation: "train"
    config: dict                   # fully resolved, JSON-able
    deps: dict[str, str] = field(default_factory=dict)         # input name → upstream step
    files: dict[str, FileInput] = field(default_factory=dict)  # input name → data on disk
    origin: str = ""               # file:line of the block it comes from
    tagged: dict[str, TaggedInput] = field(default_factory=dict)  # input name → a tagged build's output
    # What the step asks of the machine that runs it (GPUs, memory, time, partition, nodes):
    # read by cluster executors, never part of its key (where a step runs does not change it).
    resources: dict = field(default_factory=dict)


class GraphError(Exception):
    pass


@dataclass(frozen=True)
class Graph:
    steps: dict[str, StepSpec]

    def __post_init__(self) -> None:
        for s in self.steps.values():
            for dep in s.deps.values():
                if dep not in self.steps:
                    raise GraphError(f"step {s.name} depends on unknown step {dep}")
        self.order()  # raises on cycles

    def order(self) -> list[str]:
        """Steps in dependency order; ties in name order, so the order is stable."""
        indegree = {n: len(set(s.deps.values())) for n, s in self.steps.items()}
        ready = sorted(n for n, d in indegree.items() if d == 0)
        out = []
        dependents = self.dependents_map()
        while ready:
            n = ready.pop(0)
            out.append(n)
            for m in sorted(dependents[n]):
                indegree[m] -= 1
                if indegree[m] == 0:
                    ready.append(m)
            ready.sort()
        if len(out) != len(self.steps):
            raise GraphError("the step graph has a cycle: " + ", ".join(sorted(set(self.steps) - set(out))))
        return out

    def dependents_map(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {n: set() for n in self.steps}
        for s in self.steps.values():
            for dep in s.deps.values():
                out[dep].add(s.name)
        return out

    def closure(self, names: AbstractSet[str]) -> set[str]:
        """`names` and everything they depend on."""
        seen, stack = set(), list(names)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(self.steps[n].deps.values())
        return seen

    def select(self, patterns: Iterable[str]) -> tuple[set[str], list[str]]:
        """Steps matching names or globs (`train.*`); and the patterns that matched nothing."""
        found: set[str] = set()
        unmatched: list[str] = []
        for pat in patterns:
            hits = {n for n in self.steps if n == pat or fnmatch.fnmatchcase(n, pat)}
            if not hits:
                unmatched.append(pat)
            found |= hits
        return found, unmatched

    def to_dot(self) -> str:
        lines = ["digraph formula {", "  rankdir=LR;", "  node [shape=box, fontname=monospace];"]
        for n in self.order():
            lines.append(f'  "{n}" [label="{n}\\n({self.steps[n].kind})"];')
        for n in self.order():
            for inp, dep in sorted(self.steps[n].deps.items()):
                lines.append(f'  "{dep}" -> "{n}" [label="{inp}"];')
        lines.append("}")
        return "\n".join(lines)

    def to_mermaid(self) -> str:
        ids = {n: f"s{i}" for i, n in enumerate(self.order())}
        lines = ["flowchart LR"]
        for n, i in ids.items():
            lines.append(f'  {i}["{n}"]')
        for n in self.order():
            for inp, dep in sorted(self.steps[n].deps.items()):
                lines.append(f"  {ids[dep]} -->|{inp}| {ids[n]}")
        return "\n".join(lines)

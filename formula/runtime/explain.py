"""Why a step will run: its key compared with the one it had in the formula's last build."""

from __future__ import annotations

import json
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from .build import Builder, Keyed, TagError
from formula.contract.graph import Graph
from .store import Store


@dataclass
class PlannedStep:
    step: str
    status: str            # cached, run, after (runs because an input will be rebuilt)
    key: str = ""
    reasons: list[str] = field(default_factory=list)


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: value}


def _show(v: object) -> str:
    return json.dumps(v, sort_keys=True) if not isinstance(v, str) else v


def reasons(new: Keyed, old: dict | None, graph: Graph) -> list[str]:
    if old is None:
        return ["never built"]
    oc, nc = old.get("components", {}), new.components
    out = []
    if oc.get("format") != nc["format"]:
        out.append(f"the key format changed ({oc.get('format')} → {nc['format']})")
    if oc.get("impl") != nc["impl"]:
        out.append("its code changed (the step module or a project module it imports)")
    if oc.get("libs") != nc["libs"]:
        for lib in sorted(set(oc.get("libs", {})) | set(nc["libs"])):
            a, b = oc.get("libs", {}).get(lib), nc["libs"].get(lib)
            if a != b:
                out.append(f"library {lib} {a or 'absent'} → {b or 'absent'}")
    before, after = _flatten(oc.get("config", {})), _flatten(nc["config"])
    for k in sorted(set(before) | set(after)):
        if before.get(k, "∅") != after.get(k, "∅"):
            if k not in before:
                out.append(f"config `{k}` added: {_show(after[k])}")
            elif k not in after:
                out.append(f"config `{k}` removed (was {_show(before[k])})")
            else:
                out.append(f"config `{k}`: {_show(before[k])} → {_show(after[k])}")
    spec = new.spec
    for name, digest in sorted(nc["inputs"].items()):
        if oc.get("inputs", {}).get(name) == digest:
            continue
        if name in spec.deps:
            out.append(f"input `{name}` changed: {spec.deps[name]} produced different output")
            continue
        if name in spec.tagged:
            t = spec.tagged[name]
            out.append(f"input `{name}` changed: the build tagged `{t.tag}` holds another {t.step}")
            continue
        was, now = old.get("files", {}).get(name, {}), new.files.get(name, {})
        added = sorted(set(now) - set(was))
        removed = sorted(set(was) - set(now))
        changed = sorted(p for p in set(now) & set(was) if now[p] != was[p])
        parts = []
        for label, paths in (("added", added), ("changed", changed), ("removed", removed)):
            if paths:
                shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
                parts.append(f"{len(paths)} {label} ({shown})")
        out.append(f"data `{name}` ({spec.files[name].pattern}): " + ("; ".join(parts) or "changed"))
    return out or ["the key changed"]


def plan(builder: Builder, graph: Graph, store: Store, formula: str,
         force: AbstractSet[str] = frozenset(), only: AbstractSet[str] | None = None) -> list[PlannedStep]:
    """A dry run: which steps are cached, and why the others will run."""
    previous = (store.latest(formula) or {}).get("steps", {})
    selected = graph.closure(only) if only else set(graph.steps)
    outputs: dict[str, str] = {}
    out: list[PlannedStep] = []
    hasher = store.hasher()
    try:
        for name in graph.order():
            if name not in selected:
                continue
            spec = graph.steps[name]
            waiting = [d for d in spec.deps.values() if d not in outputs]
            if waiting:
                out.append(PlannedStep(name, "after", "", [
                    f"input from {d}, which will run (stays cached if {d}'s output is unchanged)"
                    for d in sorted(set(waiting))]))
                continue
            try:
                keyed = builder.key(spec, outputs, hasher)
            except TagError as exc:
                out.append(PlannedStep(name, "run", "", [f"will fail: {exc}"]))
                continue
            record = store.action(keyed.key)
            damage = store.damage(record["output"]) if record is not None else []
            if record is not None and name not in force and not damage:
                outputs[name] = record["output"]
                out.append(PlannedStep(name, "cached", keyed.key))
                continue
            if damage and name not in force:
                shown = "; ".join(f"{f}: {w}" for f, w in damage[:3])
                out.append(PlannedStep(name, "run", keyed.key, [
                    f"its stored output is damaged ({shown}); the build moves it aside and rebuilds it"]))
                continue
            old = None
            if name in previous:
                try:
                    old = json.loads(store.action_path(previous[name]).read_text())
                except (FileNotFoundError, json.JSONDecodeError):
                    old = None
            why = ["forced (--force)"] if name in force else reasons(keyed, old, graph)
            if record is None and old is not None and old.get("key") == keyed.key:
                why = ["its output is missing from the store (removed by gc?)"]
            out.append(PlannedStep(name, "run", keyed.key, why))
    finally:
        hasher.close()
    return out

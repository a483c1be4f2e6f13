"""The human report of a build: its step graph, each step's figures and pictures, the checks
that passed and failed. Written from the store's records alone (no step is imported), as
Markdown beside copies of the pictures, so the folder can be attached to a review or a ticket."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path


def _mermaid(graph: dict[str, list[str]]) -> list[str]:
    ids = {n: f"s{i}" for i, n in enumerate(sorted(graph))}
    lines = ["```mermaid", "flowchart LR"]
    lines += [f'  {ids[n]}["{n}"]' for n in sorted(graph)]
    lines += [f"  {ids[d]} --> {ids[n]}" for n in sorted(graph) for d in graph[n] if d in ids]
    return lines + ["```"]


def _figure(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _demote(markdown: str) -> str:
    """A step's own report inside the build's: every heading one level down (its title becomes a
    section of the build report, its sections subsections), code blocks left alone."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if line.startswith("#") and not fenced else line)
    return "\n".join(out)


def write_report(store, build: dict) -> Path:
    name = build.get("name") or Path(build["formula"]).stem
    folder = store.root / "reports" / re.sub(r"[^\w.-]", "_", name)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    records = {step: store.action(key) for step, key in sorted(build.get("steps", {}).items())}
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(build.get("time", 0)))
    lines = [f"# Build report: {name}", "",
             f"`{build['formula']}`, built {when}"
             + (f" with `{' '.join(build['overrides'])}`" if build.get("overrides") else "")
             + f": **{'ok' if build.get('ok') else 'FAILED'}**.", ""]
    checks = [(step, c) for step, r in records.items() if r for c in r.get("checks", [])]
    if checks:
        lines += ["## Checks", "", "| step | check | result | |", "|---|---|---|---|"]
        lines += [f"| {step} | `{c.get('check')}` | {'passed' if c.get('passed') else '**FAILED**'} | "
                  f"{c.get('detail', '')} |" for step, c in checks]
        lines.append("")
    lines += ["## Steps", "", "| step | kind | built in | key | figures |", "|---|---|---|---|---|"]
    for step, r in records.items():
        if r is None:
            lines.append(f"| {step} | | | | (record missing) |")
            continue
        figures = ", ".join(f"{k} {_figure(v)}" for k, v in sorted(r.get("metrics", {}).items())
                            if isinstance(v, (int, float)))
        lines.append(f"| {step} | {r['kind']} | {r['seconds']}s | `{r['key'][:12]}` | {figures} |")
    lines += ["", "## Step graph", "", *_mermaid(build.get("graph", {})), ""]
    pictures = []
    for step, r in records.items():
        if r is None:
            continue
        out = store.object_path(r["output"])
        for png in sorted(out.glob("*.png")):
            copy = f"{step}-{png.name}"
            shutil.copy(png, tmp / copy)
            pictures.append(f"### {step}: {png.stem}\n\n![{step} {png.stem}]({copy})\n")
        if (out / "report.md").is_file():
            lines += [_demote((out / "report.md").read_text(encoding="utf-8")), ""]
    if pictures:
        lines += ["## Curves", "", *pictures]
    (tmp / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp / "build.json").write_text(json.dumps(build, indent=1, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder / "report.md"

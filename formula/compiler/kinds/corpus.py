"""`corpus` blocks → CorpusPlan: its sources (transcript globs or a Gas Town projects folder with
its beads export and outcome rules, which must read and parse), filters and split."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from formula.contract.outcome_rules import RulesError, parse_rules
from formula.contract.templates import shown

from .. import plan
from ..diagnostics import Label
from ..evaluate import FuncValue
from ..resolve import BlockDef
from ..schema import CLAUDE_CODE_READING
from ..source import Source
from .common import Checked, Checker, arg_span, has_invalid


def build(ck: Checker, c: Checked) -> plan.CorpusPlan | None:
    v, b = c.values, c.block
    if has_invalid(v):
        return None
    written = v["source"] if isinstance(v["source"], tuple) else (v["source"],)
    sources = tuple(outcomes(ck, b, f, source(ck, b, f)) for f in written)
    for f, s in zip(written, sources):
        if isinstance(s, plan.TranscriptSource) and s.format == "pairs":
            ck.err("wrong-kind", "a corpus reads sessions, not preference pairs", f.span,
                   "`format = pairs`", help="read given pairs in a `pairs` block: "
                   "`pairs NAME { source = transcripts(\"...\", format = pairs) }`")
            return None
    dedup = v["dedup"]
    return plan.CorpusPlan(
        name=b.qualified, sources=sources, where=v["where"], scrub=tuple(v["scrub"]),
        dedup=dedup.name if isinstance(dedup, FuncValue) else dedup,
        dedup_threshold=dedup.args["threshold"] if isinstance(dedup, FuncValue) else 1.0,
        holdout=v["holdout"], max_len=v["max_len"], truncation=v["truncation"], min_turns=v["min_turns"],
        max_turns=v["max_turns"], max_repeats=v["max_repeats"], on_error=v["on_error"],
        max_dropped=v["max_dropped"], origin=ck.origin(b))


def source(ck: Checker, b: BlockDef, f: FuncValue) -> plan.TranscriptSource | plan.GastownSource:
    """A `transcripts(...)` or `gastown(...)` call as its record, paths made absolute."""
    reading = {p.name: f.args[p.name] for p in CLAUDE_CODE_READING}
    if f.name == "gastown":
        # `town` is matched against the agents' working directories, so it stays as written.
        return plan.GastownSource(projects=ck.path(b, f.args["projects"]), beads=ck.path(b, f.args["beads"]),
                                  town=f.args["town"], **reading)
    meta = f.args["meta"]
    meta_kind, meta_arg = (meta.name, next(iter(meta.args.values()))) if isinstance(meta, FuncValue) \
        else (meta, "")
    if meta_kind == "sidecar":
        meta_arg = ck.path(b, meta_arg)
    return plan.TranscriptSource(glob=ck.path(b, f.args["glob"]), format=f.args["format"], meta=meta_kind,
                                 meta_arg=meta_arg, **reading)


def outcomes(ck: Checker, b: BlockDef, f: FuncValue, src: Any) -> Any:
    """A gastown source's outcome rules file: it must exist and parse."""
    if f.name != "gastown" or f.args.get("outcomes") is None:
        return src
    path = ck.path(b, f.args["outcomes"])
    at = f.span
    arg = arg_span(f.span, "outcomes")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror or str(exc) if isinstance(exc, OSError) else "not UTF-8 text"
        ck.err("outcome-rules", f"cannot read the outcome rules {shown(path)}: {why}",
               arg or at, "this file", help="check the path (relative to the formula)")
        return src
    try:
        parse_rules(text, shown(path))
    except RulesError as exc:
        if exc.line:
            rules = Source(shown(path), text)
            line_start = sum(len(x) + 1 for x in text.split("\n")[: exc.line - 1])
            line_text = rules.line_text(exc.line)
            indent = len(line_text) - len(line_text.lstrip())
            span = rules.span(line_start + indent, line_start + max(len(line_text), indent + 1))
            ck.err("outcome-rules", f"bad outcome rules: {exc.message}", span, "here",
                   labels=[Label(arg or at, "rules read from here")],
                   help="see docs/data.md, Outcomes")
        else:
            ck.err("outcome-rules", f"bad outcome rules in {shown(path)}: {exc.message}",
                   arg or at, "these rules", help="see docs/data.md, Outcomes")
        return src
    return replace(src, outcomes=path)

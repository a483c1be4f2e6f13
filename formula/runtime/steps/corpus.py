"""The corpus step: sessions read, scrubbed, filtered, deduplicated and split.

Output: `train.jsonl` and `holdout.jsonl` (one session per line: id, OpenAI-shaped messages,
metadata, provenance), `report.json` (sessions kept and dropped per reason, scrub counts per kind
and per file, skipped lines) and `metrics.json`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from formula.runtime.corpus import loaders, quality
from formula.runtime.corpus.predicate import describe, matches
from formula.runtime.corpus.scrub import Scrubber, ScrubReport
from formula.runtime.corpus.sessions import LoadError, Session
from formula.runtime.step import fail, step_entry

LIBRARIES = ("detect-secrets", "datasketch")
KEEP_META = ("role", "outcome", "bead", "session", "date", "branch")  # never scrubbed


@dataclass
class Source:
    type: str = "transcript_source"
    input: str = ""
    glob: str = ""
    format: str = "claude_code"
    meta: str = "transcript"
    meta_arg: str = ""
    projects: str = ""
    beads: str = ""
    town: str = "~/gt"


@dataclass
class Config:
    name: str = "corpus"
    sources: list[Source] = field(default_factory=list)
    where: Any = None
    scrub: list[str] = field(default_factory=lambda: ["secrets", "pii"])
    dedup: str = "exact"
    dedup_threshold: float = 1.0
    holdout: float = 0.0
    max_len: Optional[int] = None
    truncation: str = "end"
    min_turns: int = 1
    max_turns: Optional[int] = None
    max_repeats: int = 3
    on_error: str = "fail"
    max_dropped: float = 1.0


def load(cfg: Config, inputs: dict[str, Path], skipped: loaders.Skipped) -> list[Session]:
    sessions: list[Session] = []
    for src in cfg.sources:
        pattern = str(inputs.get(src.input, src.glob))
        files = loaders.files_of(pattern)
        if not files:
            fail(f"corpus `{cfg.name}`: no files match {pattern}")
        if src.type == "gastown_source":
            beads_path = str(inputs.get(f"{src.input}_beads", src.beads))
            if not os.path.isfile(beads_path):
                fail(f"corpus `{cfg.name}`: the beads export {beads_path} does not exist "
                     "(export it with `bd export` or point `beads =` at .beads/issues.jsonl)")
            outcomes = loaders.beads_outcomes(beads_path)
            for f in files:
                s = loaders.claude_code_session(f, cfg.on_error, skipped)
                if s is None:
                    continue
                role = loaders.role_from_cwd(s.meta.get("cwd", ""), src.town)
                if role:
                    s.meta["role"] = role
                s.meta.update({k: v for k, v in outcomes.get(s.id, {}).items() if v})
                sessions.append(s)
            continue
        if src.format == "pairs":
            fail(f"corpus `{cfg.name}`: pairs files belong in a `pairs` block")
        side = loaders.sidecar_meta(src.meta_arg) if src.meta == "sidecar" else {}
        for f in files:
            if src.format == "claude_code":
                found = [loaders.claude_code_session(f, cfg.on_error, skipped)]
            else:
                found = list(loaders.LOADERS[src.format](f, cfg.on_error, skipped))
            for s in found:
                if s is None:
                    continue
                if src.meta == "sidecar":
                    s.meta.update({k: v for k, v in side.get(s.id, {}).items() if k not in ("session", "id")})
                elif src.meta == "pattern":
                    loaders.apply_meta_pattern(s, src.meta_arg)
                sessions.append(s)
    return sessions


def derive_meta(s: Session, root: str) -> None:
    s.meta.setdefault("session", s.id)
    s.meta["turns"] = s.turns
    s.meta["tool_calls"] = sum(len(m.get("tool_calls", ())) for m in s.messages)
    s.meta["length"] = len(s.text())
    s.meta["source"] = os.path.relpath(s.source, root) if root else s.source


def scrub_session(s: Session, scrubber: Scrubber, report: ScrubReport) -> None:
    src = s.meta.get("source", s.source)
    for m in s.messages:
        if m.get("content"):
            m["content"] = scrubber.scrub(m["content"], src, report)
        for call in m.get("tool_calls", ()):
            call["function"]["arguments"] = scrubber.scrub(call["function"]["arguments"], src, report)
    for k, v in list(s.meta.items()):
        if isinstance(v, str) and k not in KEEP_META:
            s.meta[k] = scrubber.scrub(v, src, report)


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    skipped = loaders.Skipped()
    try:
        sessions = load(cfg, inputs, skipped)
    except LoadError as exc:
        hint = "" if cfg.on_error == "skip" else " (or set `on_error = skip` to count and skip such lines)"
        fail(f"corpus `{cfg.name}`: {exc}{hint}")
    root = os.path.commonpath([os.path.dirname(s.source) for s in sessions]) if sessions else ""
    stages: list[tuple[str, int]] = [("read", len(sessions))]
    drops: Counter = Counter()
    report = ScrubReport()
    scrubber = Scrubber(cfg.scrub)
    for s in sessions:
        derive_meta(s, root)
        scrub_session(s, scrubber, report)
        s.source = s.meta["source"]  # relative and scrubbed: provenance names no machine or user

    if cfg.where is not None:
        kept = [s for s in sessions if matches(cfg.where, s.meta)]
        stages.append((f"where {describe(cfg.where)}", len(kept)))
        selected = len(kept)
        sessions = kept
    selected = len(sessions)

    kept, rejected = [], []
    for s in sessions:
        reason = quality.drop_reason(s, cfg.min_turns, cfg.max_turns, cfg.max_repeats)
        if reason:
            drops[reason] += 1
            s.meta["dropped"] = reason
            rejected.append(s)
        else:
            kept.append(s)
    sessions = kept
    stages.append(("quality gates", len(sessions)))

    if cfg.dedup in ("exact", "near"):
        seen, kept = set(), []
        for s in sessions:
            h = s.content_hash()
            if h in seen:
                drops["duplicate"] += 1
            else:
                seen.add(h)
                kept.append(s)
        sessions = kept
        if cfg.dedup == "near" and sessions:
            near = quality.near_duplicates(sessions, cfg.dedup_threshold)
            drops["near_duplicate"] += len(near)
            sessions = [s for i, s in enumerate(sessions) if i not in near]
        stages.append((f"dedup {cfg.dedup}", len(sessions)))

    dropped = sum(drops.values())
    share = dropped / selected if selected else 0.0
    if share > cfg.max_dropped:
        fail(f"corpus `{cfg.name}`: the quality gates dropped {dropped} of {selected} sessions "
             f"({share:.0%}), more than max_dropped = {cfg.max_dropped:.0%}: "
             + ", ".join(f"{k} {v}" for k, v in drops.most_common()))
    if not sessions:
        emptied = next((name for (name, n), (_, before) in zip(stages[1:], stages) if n == 0 and before),
                       stages[0][0])
        fail(f"corpus `{cfg.name}` is empty after {emptied}: "
             + " → ".join(f"{name}: {n}" for name, n in stages))

    train, holdout = [], []
    for s in sorted(sessions, key=lambda s: s.id):
        (holdout if quality.in_holdout(s.id, cfg.holdout) else train).append(s)
    # Dropped sessions never train by imitation, but a failing loop is a fine rejected side of
    # a preference pair; the pairs step may read them (scrubbed like the rest).
    for name, part in (("train", train), ("holdout", holdout), ("dropped", rejected)):
        with open(output / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for s in part:
                fh.write(json.dumps(s.to_json(), sort_keys=True, ensure_ascii=False) + "\n")
    summary = {"read": stages[0][1], "selected": selected, "kept": len(sessions), "train": len(train),
               "holdout": len(holdout), "dropped": dict(sorted(drops.items())),
               "dropped_share": round(share, 4),
               "roles": dict(sorted(Counter(s.meta.get("role", "?") for s in sessions).items())),
               "outcomes": dict(sorted(Counter(s.meta.get("outcome", "?") for s in sessions).items()))}
    (output / "report.json").write_text(json.dumps({
        **summary, "stages": [{"stage": n, "sessions": c} for n, c in stages],
        "scrub": report.to_json(), "skipped_lines": skipped.items}, indent=1, sort_keys=True))
    (output / "metrics.json").write_text(json.dumps({
        "sessions_train": len(train), "sessions_holdout": len(holdout), "dropped_share": round(share, 4),
        "scrubbed": sum(report.by_kind.values()), "skipped_lines": len(skipped.items)}))


main = step_entry(Config, run)

if __name__ == "__main__":
    main()

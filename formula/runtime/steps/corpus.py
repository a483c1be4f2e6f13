"""The corpus step: sessions read, scrubbed, filtered, deduplicated and split.

Output: `train.jsonl` and `holdout.jsonl` (one example per line: a unique id, OpenAI-shaped
messages, metadata, provenance), `dropped.jsonl` (with the reason), `report.json` (examples kept
and dropped per reason, what the transcript loader left out, how outcomes were linked, scrub
counts per kind and per file, skipped lines) and `metrics.json`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from formula.contract import outcome_rules
from formula.contract.conditions import describe, matches
from formula.contract.steps import CorpusConfig, GastownSource, TranscriptSource
from formula.runtime.corpus import beads, claude_code, gastown, loaders, quality
from formula.runtime.corpus.scrub import Scrubber, ScrubReport, scrub_path, scrub_text
from formula.runtime.corpus.sessions import LoadError, Session
from formula.runtime.step import fail, step_entry
from formula.runtime.steps import typed

LIBRARIES = ("detect-secrets", "datasketch")
KEEP_META = ("role", "outcome", "bead", "session", "date", "branch", "kind", "parent", "agent", "rig",
             "start", "end", "link", "version")  # never scrubbed


Config = CorpusConfig  # the step's configuration: formula/contract/steps.py
Source = TranscriptSource | GastownSource


@dataclass
class Loaded:
    """What the sources gave, before any filter: sessions and how they were read and linked."""

    sessions: list[Session] = field(default_factory=list)
    skipped: loaders.Skipped = field(default_factory=loaders.Skipped)
    claude: claude_code.Stats = field(default_factory=claude_code.Stats)
    links: dict = field(default_factory=dict)
    per_source: list[dict] = field(default_factory=list)


def _options(src: Source) -> claude_code.Options:
    return claude_code.Options(subagents=src.subagents, branches=src.branches, thinking=src.thinking)


def load_gastown(src: GastownSource, inputs: dict[str, Path], files: list[str], loaded: Loaded, on_error: str,
                 name: str) -> list[Session]:
    """A Claude Code projects folder: roles and agents from each session's cwd, outcomes from beads."""
    beads_path = str(inputs.get(f"{src.input}_beads", src.beads))
    if not os.path.isfile(beads_path):
        fail(f"corpus `{name}`: the beads export {beads_path} does not exist "
             "(export it with `bd export` or point `beads =` at .beads/issues.jsonl)")
    found = claude_code.load(files, on_error, loaded.skipped, _options(src), loaded.claude)
    for s in found:
        agent = gastown.agent_of(s.meta.get("cwd", ""), src.town)
        if agent:
            s.meta.update(role=agent.role, agent=agent.address)
            if agent.rig:
                s.meta["rig"] = agent.rig
    rules_path = str(inputs.get(f"{src.input}_outcomes", src.outcomes or ""))
    if rules_path:
        try:
            rules = outcome_rules.parse_rules(Path(rules_path).read_text(encoding="utf-8"), rules_path)
        except outcome_rules.RulesError as exc:
            fail(f"corpus `{name}`: {exc}")
    else:
        rules = outcome_rules.DEFAULT_RULES
    records = beads.read_beads(beads_path)
    main = [s for s in found if s.meta.get("kind") != "subagent"]
    report = beads.link_outcomes(main, records, rules)
    loaded.links = report.to_json()
    parents = {s.id: s for s in main}
    for s in found:  # subagent work shares its parent's bead and outcome
        parent = parents.get(s.meta.get("parent", ""))
        if s.meta.get("kind") == "subagent" and parent is not None:
            s.meta.update({k: parent.meta[k] for k in ("bead", "beads", "outcome", "link") if k in parent.meta})
    return found


def load(cfg: Config, inputs: dict[str, Path], loaded: Loaded | None = None) -> Loaded:
    loaded = loaded or Loaded()
    for src in cfg.sources:
        default = src.glob if isinstance(src, TranscriptSource) else src.projects.rstrip("/") + "/**/*.jsonl"
        pattern = str(inputs.get(src.input, default))
        files = loaders.files_of(pattern)
        if not files:
            fail(f"corpus `{cfg.name}`: no files match {pattern}")
        if isinstance(src, GastownSource):
            found = load_gastown(src, inputs, files, loaded, cfg.on_error, cfg.name)
        elif src.format == "pairs":
            fail(f"corpus `{cfg.name}`: pairs files belong in a `pairs` block")
        elif src.format == "claude_code":
            found = claude_code.load(files, cfg.on_error, loaded.skipped, _options(src), loaded.claude)
        else:
            found = [s for f in files for s in loaders.LOADERS[src.format](f, cfg.on_error, loaded.skipped)]
        if isinstance(src, TranscriptSource) and src.meta == "sidecar":
            side = loaders.sidecar_meta(src.meta_arg)
            for s in found:
                s.meta.update({k: v for k, v in side.get(s.id, {}).items() if k not in ("session", "id")})
        elif isinstance(src, TranscriptSource) and src.meta == "pattern":
            for s in found:
                loaders.apply_meta_pattern(s, src.meta_arg)
        loaded.per_source.append({"source": src.input, "files": len(files), "sessions": len(found)})
        loaded.sessions += found
    return loaded


def derive_meta(s: Session, root: str) -> None:
    s.meta.setdefault("session", s.id)
    s.meta["turns"] = s.turns
    s.meta["tool_calls"] = sum(len(m.get("tool_calls", ())) for m in s.messages)
    s.meta["length"] = len(s.text())
    s.meta["source"] = os.path.relpath(s.source, root) if root else s.source


HOME_USER = re.compile(r"(?:^|/)(?:home|Users)/([^/]+)")


def home_users(sessions: list[Session]) -> set[str]:
    """The users whose homes the sessions ran in (from their working directories), known to the
    scrubber before it reads any text, so that every session is scrubbed alike."""
    return {m.group(1) for s in sessions for m in HOME_USER.finditer(s.meta.get("cwd", "") or "")}


def scrub_session(s: Session, scrubber: Scrubber, report: ScrubReport, users: set[str]) -> None:
    scrubber.users = set(users)  # what one session teaches the scrubber stays with that session
    src = s.meta["source"] = s.source = scrub_path(s.meta["source"])
    for m in s.messages:
        for key in ("content", "reasoning_content"):
            if m.get(key):
                m[key] = scrubber.scrub(m[key], src, report)
        for call in m.get("tool_calls", ()):
            call["function"]["arguments"] = scrubber.scrub(call["function"]["arguments"], src, report)
    for k, v in list(s.meta.items()):
        if isinstance(v, str) and k not in KEEP_META:
            s.meta[k] = scrubber.scrub(v, src, report)


def _scrub_chunk(args: tuple[list[Session], list[str], set[str]]) -> tuple[list[Session], ScrubReport]:
    sessions, kinds, users = args
    scrubber, report = Scrubber(kinds), ScrubReport()
    users = users | scrubber.users
    for s in sessions:
        scrub_session(s, scrubber, report, users)
    return sessions, report


def scrub_all(sessions: list[Session], kinds: list[str]) -> tuple[list[Session], ScrubReport]:
    """Every session scrubbed, on every core this process may use: scrubbing is most of the
    corpus step's time. Each session is scrubbed independently of the others, so the output is
    the same whatever the number of processes."""
    users = home_users(sessions)
    procs = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 16)
    if procs < 2 or len(sessions) < 64:
        return _scrub_chunk((sessions, list(kinds), users))
    import multiprocessing

    size = -(-len(sessions) // (procs * 4))
    chunks = [(sessions[i:i + size], list(kinds), users) for i in range(0, len(sessions), size)]
    report = ScrubReport()
    out: list[Session] = []
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        for done, part in pool.imap(_scrub_chunk, chunks):
            out += done
            report.merge(part)
    return out, report


@dataclass
class Corpus:
    """The corpus step's result before it is written: what `formula data` shows."""

    train: list[Session]
    holdout: list[Session]
    rejected: list[Session]
    stages: list[tuple[str, int]]
    drops: Counter
    selected: int
    loaded: Loaded
    scrub: ScrubReport

    @property
    def kept(self) -> list[Session]:
        return self.train + self.holdout

    @property
    def dropped_share(self) -> float:
        return sum(self.drops.values()) / self.selected if self.selected else 0.0

    def summary(self) -> dict:
        kept = self.kept
        return {"read": self.stages[0][1], "selected": self.selected, "kept": len(kept),
                "train": len(self.train), "holdout": len(self.holdout),
                "dropped": dict(sorted(self.drops.items())), "dropped_share": round(self.dropped_share, 4),
                "roles": dict(sorted(Counter(s.meta.get("role", "?") for s in kept).items())),
                "outcomes": dict(sorted(Counter(s.meta.get("outcome", "?") for s in kept).items())),
                "kinds": dict(sorted(Counter(s.meta.get("kind", "session") for s in kept).items()))}

    def report(self) -> dict:
        return {**self.summary(), "stages": [{"stage": n, "sessions": c} for n, c in self.stages],
                "sources": self.loaded.per_source, "transcripts": self.loaded.claude.to_json(),
                "links": self.loaded.links, "scrub": self.scrub.to_json(),
                "skipped_lines": self.loaded.skipped.items}


def collect(cfg: Config, inputs: dict[str, Path]) -> Corpus:
    """Read, scrub, filter, deduplicate and split; fails (as the step would) on bad input only."""
    try:
        loaded = load(cfg, inputs)
    except LoadError as exc:
        hint = "" if cfg.on_error == "skip" else " (or set `on_error = skip` to count and skip such lines)"
        fail(f"corpus `{cfg.name}`: {exc}{hint}")
    sessions = loaded.sessions
    root = os.path.commonpath([os.path.dirname(s.source) for s in sessions]) if sessions else ""
    stages: list[tuple[str, int]] = [("read", len(sessions))]
    drops: Counter = Counter()
    for s in sessions:
        derive_meta(s, root)
    sessions, report = scrub_all(sessions, cfg.scrub)  # provenance too: relative, naming no user
    for item in loaded.skipped.items:
        item["file"] = scrub_path(os.path.relpath(item["file"], root) if root else item["file"])
        item["error"] = scrub_text(item["error"])

    if cfg.where is not None:
        sessions = [s for s in sessions if matches(cfg.where, s.meta)]
        stages.append((f"where {describe(cfg.where)}", len(sessions)))
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

    train, holdout = [], []
    for s in sorted(sessions, key=lambda s: s.id):
        # Segments and subagents of one session fall on the same side, by the session's id.
        (holdout if quality.in_holdout(s.meta.get("session", s.id), cfg.holdout) else train).append(s)
    return Corpus(train, holdout, rejected, stages, drops, selected, loaded, report)


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    corpus = collect(cfg, inputs)
    dropped, selected = sum(corpus.drops.values()), corpus.selected
    if corpus.dropped_share > cfg.max_dropped:
        fail(f"corpus `{cfg.name}`: the quality gates dropped {dropped} of {selected} sessions "
             f"({corpus.dropped_share:.0%}), more than max_dropped = {cfg.max_dropped:.0%}: "
             + ", ".join(f"{k} {v}" for k, v in corpus.drops.most_common()))
    if not corpus.kept:
        stages = corpus.stages
        emptied = next((name for (name, n), (_, before) in zip(stages[1:], stages) if n == 0 and before),
                       stages[0][0])
        fail(f"corpus `{cfg.name}` is empty after {emptied}: "
             + " → ".join(f"{name}: {n}" for name, n in stages))
    ids = Counter(s.id for s in corpus.kept + corpus.rejected)
    twice = [i for i, n in ids.items() if n > 1]
    if twice:
        fail(f"corpus `{cfg.name}`: session ids occur twice ({', '.join(sorted(twice)[:5])}); two sources "
             "read the same transcripts")
    # Dropped sessions never train by imitation, but a failing loop is a fine rejected side of
    # a preference pair; the pairs step may read them (scrubbed like the rest).
    for name, part in (("train", corpus.train), ("holdout", corpus.holdout), ("dropped", corpus.rejected)):
        with open(output / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for s in part:
                fh.write(json.dumps(s.to_json(), sort_keys=True, ensure_ascii=False) + "\n")
    (output / "report.json").write_text(json.dumps(corpus.report(), indent=1, sort_keys=True))
    (output / "metrics.json").write_text(json.dumps({
        "sessions_train": len(corpus.train), "sessions_holdout": len(corpus.holdout),
        "dropped_share": round(corpus.dropped_share, 4), "scrubbed": sum(corpus.scrub.by_kind.values()),
        "skipped_lines": len(corpus.loaded.skipped.items)}))


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

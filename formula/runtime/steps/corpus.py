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
from collections.abc import Iterable
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
    scrub: ScrubReport = field(default_factory=ScrubReport)
    root: str = ""  # the folder every source file lies below; provenance is relative to it


def _options(src: Source) -> claude_code.Options:
    return claude_code.Options(subagents=src.subagents, branches=src.branches, thinking=src.thinking,
                               max_event_bytes=src.max_event, max_session_bytes=src.max_session,
                               max_session_events=src.max_session_events)


@dataclass(frozen=True)
class Reading:
    """How a worker reads and prepares Claude Code files (picklable)."""

    options: claude_code.Options
    on_error: str
    kinds: tuple[str, ...]
    root: str
    town: str | None = None  # Gas Town roles from each session's cwd below this root


def prepare(sessions: list[Session], reading: Reading, report: ScrubReport) -> None:
    """Roles, derived metadata and scrubbing: everything about a session that needs no other."""
    scrubber = Scrubber(list(reading.kinds)) if reading.kinds else None
    for s in sessions:
        if reading.town is not None:
            agent = gastown.agent_of(s.meta.get("cwd", ""), reading.town)
            if agent:
                s.meta.update(role=agent.role, agent=agent.address)
                if agent.rig:
                    s.meta["rig"] = agent.rig
        derive_meta(s, reading.root)
        if scrubber is None:
            s.meta["source"] = s.source = scrub_path(s.meta["source"])
        else:
            scrub_session(s, scrubber, report)


def _read_chunk(job: tuple[list[str], Reading]) -> tuple[list[Session], claude_code.Stats, list[dict], ScrubReport]:
    files, reading = job
    skipped, stats, report = loaders.Skipped(), claude_code.Stats(), ScrubReport()
    found = claude_code.load(files, reading.on_error, skipped, reading.options, stats)
    prepare(found, reading, report)
    return found, stats, skipped.items, report


def workers() -> int:
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 16)


def read_claude_code(files: list[str], reading: Reading, loaded: Loaded) -> list[Session]:
    """Claude Code files read, tagged and scrubbed on every core this process may use (reading
    and scrubbing are nearly all of the step's time). Files go to workers by project folder, in
    order, and each session is prepared on its own, so the output does not depend on the number
    of processes."""
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(claude_code.project_folder(f), []).append(f)
    procs = workers()
    target = max(1, -(-len(files) // (procs * 4)))
    jobs, current = [], []
    for group in groups.values():
        current += group
        if len(current) >= target:
            jobs.append((current, reading))
            current = []
    if current:
        jobs.append((current, reading))
    results: Iterable[tuple[list[Session], claude_code.Stats, list[dict], ScrubReport]]
    if procs < 2 or len(jobs) < 2 or len(files) < 32:
        results = map(_read_chunk, jobs)
        pool = None
    else:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(min(procs, len(jobs)))
        results = pool.imap(_read_chunk, jobs)
    found: list[Session] = []
    try:
        for sessions, stats, skipped, report in results:
            found += sessions
            loaded.claude.merge(stats)
            loaded.skipped.items += skipped
            loaded.scrub.merge(report)
    finally:
        if pool is not None:
            pool.terminate()
    return found


def load_gastown(src: GastownSource, inputs: dict[str, Path], files: list[str], loaded: Loaded, reading: Reading,
                 name: str) -> list[Session]:
    """A Claude Code projects folder: roles and agents from each session's cwd, outcomes from beads."""
    beads_path = str(inputs.get(f"{src.input}_beads", src.beads))
    if not os.path.isfile(beads_path):
        fail(f"corpus `{name}`: the beads export {beads_path} does not exist "
             "(export it with `bd export` or point `beads =` at .beads/issues.jsonl)")
    found = read_claude_code(files, reading, loaded)
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
    """Every source read; each session tagged, given its derived metadata and scrubbed."""
    loaded = loaded or Loaded()
    found_files = []
    for src in cfg.sources:
        default = src.glob if isinstance(src, TranscriptSource) else src.projects.rstrip("/") + "/**/*.jsonl"
        pattern = str(inputs.get(src.input, default))
        files = loaders.files_of(pattern)
        if not files:
            fail(f"corpus `{cfg.name}`: no files match {pattern}")
        found_files.append(files)
    root = loaded.root = os.path.commonpath([os.path.dirname(f) for files in found_files for f in files])
    for src, files in zip(cfg.sources, found_files):
        reading = Reading(_options(src), cfg.on_error, tuple(cfg.scrub), root,
                          src.town if isinstance(src, GastownSource) else None)
        if isinstance(src, GastownSource):
            found = load_gastown(src, inputs, files, loaded, reading, cfg.name)
        elif src.format == "pairs":
            fail(f"corpus `{cfg.name}`: pairs files belong in a `pairs` block")
        elif src.format == "claude_code":
            found = read_claude_code(files, reading, loaded)
        else:
            found = [s for f in files
                     for s in loaders.LOADERS[src.format](f, cfg.on_error, loaded.skipped, src.max_event)]
            prepare(found, reading, loaded.scrub)
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


def scrub_session(s: Session, scrubber: Scrubber, report: ScrubReport) -> None:
    """Scrubbed on its own: the scrubber starts from the user whose home the session ran in (and
    the account running the build), and what the session teaches it stays with the session."""
    scrubber.users = set(scrubber.base_users) | {m.group(1) for m in HOME_USER.finditer(s.meta.get("cwd", "") or "")}
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
    sessions, report, root = loaded.sessions, loaded.scrub, loaded.root
    stages: list[tuple[str, int]] = [("read", len(sessions))]
    drops: Counter = Counter()
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

    train: list[Session] = []
    holdout: list[Session] = []
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

"""Outcomes from a beads export: which beads each session worked on, and what became of them.

A beads export (`.beads/issues.jsonl`) holds one record per bead. Sessions are linked to
beads in three ways, each recorded in `meta["link"]`:

1. `closed_by_session`: the record names the Claude Code session that closed it (empty in
   every public export so far, but beads has the field);
2. `named`: the session names the bead in its own `bd`/`gt` commands (Bash tool calls), or
   Gas Town's startup beacon assigns it (`[GAS TOWN] <agent> <- <sender> • <time> • assigned:<id>`);
3. `assignee_time`: the bead's `assignee` is the session's agent address and the session's time
   span overlaps the bead's active window (`created_at` to `closed_at`, open-ended while open).

Only ids present in the export count. A molecule (or one of its steps) and a merge-request
bead stand for the work bead they serve: the work bead's `attached_molecule: <id>` description
line, a `blocks`/`parent-child` dependency from the work bead on a molecule, or the merge
request's `source_issue: <id>` line or `Merge: <id>` title. Each bead is classified by the
outcome rules (`formula.contract.outcome_rules`); a session's outcome is the class that wins
by precedence over all the beads it touches, and `meta["bead"]` is the work bead that gave it.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from formula.contract.outcome_rules import DEFAULT_RULES, IGNORE, UNKNOWN, OutcomeRules
from formula.runtime.corpus.sessions import LoadError, Session

METHODS = ("closed_by_session", "named", "assignee_time")  # strongest first
_STRENGTH = {m: i for i, m in enumerate(METHODS)}

_ATTACHED = re.compile(r"^\s*attached_molecule:\s*(\S+)", re.MULTILINE)
_SOURCE_ISSUE = re.compile(r"^\s*source_issue:\s*(\S+)", re.MULTILINE)
_MERGE_TITLE = re.compile(r"^\s*Merge:\s*(\S+)")
_MOLECULE_DEPS = ("blocks", "parent-child", "conditional-blocks")
_ID = re.compile(r"(?<![\w.-])([a-z][a-z0-9]*(?:-[a-z0-9]+)+(?:\.\d+)*)(?![\w-])")
_SEGMENTS = re.compile(r"&&|\|\||[;|\n]")
_PROGRAM = re.compile(r"^[\s(]*(?:\w+=\S*\s+)*(?:(?:sudo|env|command|exec|time|nohup)\s+)*(\S+)")
_BEACON = re.compile(r"^\s*\[GAS TOWN\]\s+(\S+)\s+<-\s+[^\n]*", re.MULTILINE)


def read_beads(path: str) -> list[dict]:
    """The records of a beads JSONL export. Fields may be missing; unknown keys are kept.
    A line that is not a JSON object with an `id` raises LoadError with its line number."""
    records = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise LoadError(path, n, "not UTF-8 text") from None
            except json.JSONDecodeError as exc:
                raise LoadError(path, n, f"not JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise LoadError(path, n, "a beads record is a JSON object")
            if not isinstance(rec.get("id"), str) or not rec["id"]:
                raise LoadError(path, n, "a beads record needs an `id`")
            records.append(rec)
    return records


def parse_time(value) -> datetime | None:
    """An aware datetime from an ISO-8601 string (no offset: UTC); None when unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def agent_address(value) -> str:
    """Gas Town addresses as assignees and sessions write them: `mayor/` is `mayor`."""
    return value.strip().rstrip("/") if isinstance(value, str) else ""


class _Windows:
    """One agent's beads by active window, for the beads that overlap a time span."""

    def __init__(self, windows: list[tuple[datetime, datetime | None, str]]):
        self.open = [(start, bead) for start, end, bead in windows if end is None]
        closed = sorted((start, max(start, end), bead) for start, end, bead in windows if end is not None)
        self.starts = [start for start, _, _ in closed]
        self.ends = [end for _, end, _ in closed]
        self.beads = [bead for _, _, bead in closed]
        self.reach, latest = [], None  # the latest end among this bead and all earlier ones
        for end in self.ends:
            latest = end if latest is None or end > latest else latest
            self.reach.append(latest)

    def overlapping(self, start: datetime, end: datetime) -> list[str]:
        found = [bead for bead_start, bead in self.open if bead_start <= end]
        i = bisect_right(self.starts, end) - 1  # beads created no later than the span ends
        while i >= 0 and self.reach[i] >= start:
            if self.ends[i] >= start:
                found.append(self.beads[i])
            i -= 1
        return found


class BeadIndex:
    """Records by id, by the session that closed them and by assignee, with their classes,
    active windows and the work bead each molecule or merge request stands for."""

    def __init__(self, records: Iterable[dict], rules: OutcomeRules = DEFAULT_RULES):
        self.rules = rules
        self.records: dict[str, dict] = {}
        for rec in records:
            self.records[rec["id"]] = rec  # a later line of the same id is the newer state
        self.rule_of = {i: rules.match(r) for i, r in self.records.items()}
        self.classes = {i: r.cls if r is not None else UNKNOWN for i, r in self.rule_of.items()}
        self.by_session: dict[str, list[str]] = defaultdict(list)
        windows: dict[str, list[tuple[datetime, datetime | None, str]]] = defaultdict(list)
        for i, rec in self.records.items():
            if self.classes[i] == IGNORE:
                continue
            if rec.get("closed_by_session"):
                self.by_session[str(rec["closed_by_session"])].append(i)
            agent = agent_address(rec.get("assignee"))
            start = parse_time(rec.get("created_at"))
            if agent and start is not None:
                windows[agent].append((start, self._end(rec), i))
        self.by_agent = {agent: _Windows(w) for agent, w in windows.items()}
        self.work_of = self._work_links()

    @staticmethod
    def _end(rec: dict) -> datetime | None:
        """When the bead stopped being worked on; None while it is open."""
        status = rec.get("status") or "open"
        if status not in ("closed", "tombstone"):
            return None
        return (parse_time(rec.get("closed_at")) or parse_time(rec.get("deleted_at"))
                or parse_time(rec.get("updated_at")) or parse_time(rec.get("created_at")))

    def _is_molecule(self, rec: dict) -> bool:
        return (rec.get("issue_type") == "molecule" or bool(rec.get("mol_type"))
                or "-wisp-" in rec["id"] or rec.get("ephemeral") is True)

    def _work_links(self) -> dict[str, str]:
        links: dict[str, str] = {}
        molecules = {i for i, r in self.records.items() if self._is_molecule(r)}

        def step_of(child: str, root: str) -> bool:
            return child.startswith(root + ".") or bool(self.records[child].get("source_formula"))

        for i, rec in self.records.items():  # the work bead's own record says which molecule
            desc = rec.get("description")
            if isinstance(desc, str) and "attached_molecule:" in desc:
                for mol in _ATTACHED.findall(desc):
                    if mol in self.records and mol != i:
                        links.setdefault(mol, i)
        for i, rec in self.records.items():  # bonds: the work bead depends on the molecule
            for dep in rec.get("dependencies") or ():
                if not isinstance(dep, dict) or dep.get("type") not in _MOLECULE_DEPS:
                    continue
                issue, mol = dep.get("issue_id") or i, dep.get("depends_on_id")
                if mol not in molecules or issue not in self.records or issue == mol:
                    continue
                if issue in molecules or step_of(issue, mol):
                    links.setdefault(issue, mol)  # a step of the molecule stands for its root
                else:
                    links.setdefault(mol, issue)
        for i in self.records:  # hierarchical steps: <root>.<n>
            root = i.rsplit(".", 1)[0] if "." in i else ""
            if root in molecules and i not in links:
                links[i] = root
        for i, rec in self.records.items():  # merge requests stand for their source issue
            if rec.get("issue_type") != "merge-request" or i in links:
                continue
            desc = rec.get("description")
            desc = desc if isinstance(desc, str) else ""
            found = _SOURCE_ISSUE.search(desc) or _MERGE_TITLE.match(rec.get("title") or "")
            if found and found.group(1) in self.records and found.group(1) != i:
                links[i] = found.group(1)
        return links

    def work_bead(self, bead: str) -> str:
        """The work bead a molecule, step or merge request stands for (itself otherwise)."""
        seen = {bead}
        while bead in self.work_of and self.work_of[bead] not in seen:
            bead = self.work_of[bead]
            seen.add(bead)
        return bead

    def linkable(self, bead: str) -> bool:
        return bead in self.records and self.classes[bead] != IGNORE


# --- what a session says about itself ------------------------------------------------------------


def _text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _commands(session: Session) -> Iterable[str]:
    for m in session.messages:
        for call in m.get("tool_calls") or ():
            fn = call.get("function") or {}
            if (fn.get("name") or "").lower() != "bash":
                continue
            args = fn.get("arguments")
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    continue
            if isinstance(args, dict) and isinstance(args.get("command"), str):
                yield args["command"]


def named_ids(command: str) -> list[str]:
    """Bead-id-shaped words in the parts of a shell command that run `bd` or `gt`."""
    found = []
    for part in _SEGMENTS.split(command):
        prog = _PROGRAM.match(part)
        if prog and prog.group(1).rsplit("/", 1)[-1] in ("bd", "gt"):
            found.extend(_ID.findall(part[prog.end():]))
    return found


def beacon(session: Session) -> tuple[str, list[str]]:
    """The agent address and the bead-id-shaped words of the topic in Gas Town's startup
    beacon, when the first user message carries one."""
    first = next((m for m in session.messages if m.get("role") == "user"), None)
    line = _BEACON.search(_text(first.get("content"))) if first else None
    if line is None:
        return "", []
    return agent_address(line.group(1)), _ID.findall(line.group(0).rsplit("•", 1)[-1])


# --- linking -------------------------------------------------------------------------------------


@dataclass
class LinkReport:
    sessions: int = 0
    outcomes: Counter = field(default_factory=Counter)   # sessions per outcome class
    links: Counter = field(default_factory=Counter)      # sessions per link method
    unlinked: list[str] = field(default_factory=list)
    records: int = 0
    bead_classes: Counter = field(default_factory=Counter)  # records per class
    other_reasons: Counter = field(default_factory=Counter)  # close reasons no reason rule read

    def to_json(self) -> dict:
        return {"sessions": self.sessions, "linked": self.sessions - len(self.unlinked),
                "outcomes": dict(sorted(self.outcomes.items())),
                "links": {m: self.links[m] for m in METHODS if self.links[m]},
                "unlinked": sorted(self.unlinked),
                "beads": {"records": self.records, "classes": dict(sorted(self.bead_classes.items())),
                          "other_reasons": [[r, n] for r, n in self.other_reasons.most_common(20)]}}


def link_session(session: Session, index: BeadIndex) -> dict[str, str]:
    """Bead id → how the session was linked to it (the strongest way, where several hold)."""
    links: dict[str, str] = {}

    def add(bead: str, method: str) -> None:
        if index.linkable(bead) and _STRENGTH[method] < _STRENGTH.get(links.get(bead, ""), 99):
            links[bead] = method

    for sid in dict.fromkeys(filter(None, (session.meta.get("session"), session.id))):
        for bead in index.by_session.get(str(sid), ()):
            add(bead, "closed_by_session")
    agent, assigned = beacon(session)
    for bead in assigned:
        add(bead, "named")
    for command in _commands(session):
        for bead in named_ids(command):
            add(bead, "named")
    agent = agent_address(session.meta.get("agent")) or agent
    start, end = parse_time(session.meta.get("start")), parse_time(session.meta.get("end"))
    start, end = start or end, end or start
    if agent and start is not None and end is not None:
        if end < start:
            start, end = end, start
        windows = index.by_agent.get(agent)
        for bead in windows.overlapping(start, end) if windows else ():
            add(bead, "assignee_time")
    return links


def link_outcomes(sessions: Iterable[Session], records: Iterable[dict] | BeadIndex,
                  rules: OutcomeRules | None = None) -> LinkReport:
    """Set `bead`, `beads`, `outcome` and `link` in the metadata of every session linked to a
    bead; unlinked sessions are left as they are. Returns the counts for the report."""
    index = records if isinstance(records, BeadIndex) else BeadIndex(records, rules or DEFAULT_RULES)
    rules = index.rules
    report = LinkReport(records=len(index.records), bead_classes=Counter(index.classes.values()))
    for i, rec in index.records.items():
        rule = index.rule_of[i]
        reason = (rec.get("close_reason") or "").strip()
        if reason and (rule is None or not rule.by_reason):
            report.other_reasons[reason.splitlines()[0][:120]] += 1
    for s in sessions:
        report.sessions += 1
        links = link_session(s, index)
        if not links:
            report.unlinked.append(s.id)
            continue
        groups: dict[str, set[str]] = defaultdict(set)
        for bead in links:
            work = index.work_bead(bead)
            groups[work].add(bead)
            if index.linkable(work):
                groups[work].add(work)
        best = None
        for work, members in groups.items():
            cls = rules.best(index.classes[b] for b in members)
            method = min((links[b] for b in members if b in links), key=_STRENGTH.__getitem__)
            key = (rules.rank(cls), _STRENGTH[method], work)
            if best is None or key < best[0]:
                best = (key, work, cls, method)
        assert best is not None  # a linked session has at least one group
        _, work, cls, method = best
        s.meta.update(bead=work, beads=sorted(set().union(*groups.values())), outcome=cls, link=method)
        report.outcomes[cls] += 1
        report.links[method] += 1
    return report

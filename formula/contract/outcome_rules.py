"""Outcome rules: which class one beads record falls into, and which class wins for a session.

A rules file is TOML. Each `[[rule]]` names a `class` and conditions on the record; all of a
rule's conditions must hold, and the first rule that matches gives the record's class:

    close_reason = "regex"      searched, case-insensitive, in close_reason ("" when missing)
    status       = ["closed"]   status in the list (a record without status is `open`)
    issue_type   = ["task"]     issue_type in the list (a record without one is a `task`)
    title        = "regex"      searched, case-insensitive, in the title
    empty_reason = true         close_reason is empty or missing (`false`: it is not)

A record no rule matches is `unknown`. The class `ignore` marks records that are not work
(mail, agent beads, events): sessions are never linked to them. `precedence` orders the classes
for a session that touches several beads: the first class in the list wins.

The shipped default (`DEFAULT_TEXT`) follows the close reasons Gas Town's own code writes.
Only the standard library is used, so `formula check` can read rules files without the runtime.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Iterable

IGNORE = "ignore"    # records that never link to a session
UNKNOWN = "unknown"  # the class of a record no rule matches

RULE_KEYS = ("class", "close_reason", "status", "issue_type", "title", "empty_reason")
TOP_KEYS = ("precedence", "rule")

DEFAULT_TEXT = r'''# Gas Town's outcome rules. The first rule that matches a bead gives its class.
precedence = ["burned", "merged", "no_change", "stale", "handoff", "patrol", "closed", "open", "unknown"]

# Not work: mail, agent and role beads, events, gates, convoys.
[[rule]]
class = "ignore"
issue_type = ["message", "agent", "role", "event", "gate", "convoy"]

# Still in flight, whatever an earlier close left in close_reason.
[[rule]]
class = "open"
status = ["open", "in_progress", "blocked", "hooked", "deferred", "pinned"]

# The refinery: "Merged in <mr>" on the work bead, "merged" on the merge request,
# "merged: close attached molecule" on its molecule, "PR created: #<n>" in PR mode.
[[rule]]
class = "merged"
close_reason = '^(merged\b|pr created: #\d+)'

# gt done on a branch with no commits ahead of the default branch.
[[rule]]
class = "no_change"
close_reason = 'no code changes|already fixed|pushed directly to main'

# gt mol burn, and gt sling --force ("burned: force re-sling"), "burned: polecat nuked".
[[rule]]
class = "burned"
close_reason = '^burned\b'

# The reaper ("stale:auto-closed by reaper") and backlog sweeps ("Stale backlog ...").
[[rule]]
class = "stale"
close_reason = '^stale\b|auto-closed by reaper|stale backlog'

# gt handoff closes the molecule root; a new session supersedes hooked mail.
[[rule]]
class = "handoff"
close_reason = '^handoff\b|superseded by new session'

# Patrols: "Patrol cycle complete: ..." and the "Digest: mol-<role>-patrol" beads.
[[rule]]
class = "patrol"
close_reason = 'patrol cycle complete|^patrol\b'

[[rule]]
class = "patrol"
title = '^digest: mol-[\w-]+-patrol'

# Closed for any other reason, or none (the most common case in real exports).
[[rule]]
class = "closed"
status = ["closed"]
'''


class RulesError(Exception):
    """A rules file the compiler and the corpus step refuse: file, line (None: the whole
    file), and what is wrong."""

    def __init__(self, path: str, line: int | None, message: str):
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclass(frozen=True)
class Rule:
    cls: str
    close_reason: re.Pattern | None = None
    status: tuple[str, ...] | None = None
    issue_type: tuple[str, ...] | None = None
    title: re.Pattern | None = None
    empty_reason: bool | None = None
    line: int | None = None  # where the rule starts in its file

    def matches(self, record: dict) -> bool:
        reason = record.get("close_reason") or ""
        if self.status is not None and (record.get("status") or "open") not in self.status:
            return False
        if self.issue_type is not None and (record.get("issue_type") or "task") not in self.issue_type:
            return False
        if self.empty_reason is not None and (not reason.strip()) != self.empty_reason:
            return False
        if self.close_reason is not None and not self.close_reason.search(reason):
            return False
        if self.title is not None and not self.title.search(record.get("title") or ""):
            return False
        return True

    @property
    def by_reason(self) -> bool:
        """Whether the rule reads close_reason (a rule that does not is a catch-all for it)."""
        return self.close_reason is not None or self.empty_reason is not None


@dataclass(frozen=True)
class OutcomeRules:
    rules: tuple[Rule, ...]
    precedence: tuple[str, ...]
    path: str = ""
    _rank: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._rank.update({c: i for i, c in enumerate(self.precedence)})

    def match(self, record: dict) -> Rule | None:
        """The first rule that matches, or None."""
        for rule in self.rules:
            if rule.matches(record):
                return rule
        return None

    def classify(self, record: dict) -> str:
        rule = self.match(record)
        return rule.cls if rule is not None else UNKNOWN

    def rank(self, cls: str | None) -> int:
        """Position in the precedence (lower wins); classes not listed come last."""
        return self._rank.get(cls, len(self.precedence))

    def best(self, classes: Iterable[str]) -> str | None:
        """The class that wins among several, by precedence; None for none."""
        return min(classes, key=lambda c: (self.rank(c), c), default=None)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.precedence, *(r.cls for r in self.rules))))


# --- parsing -----------------------------------------------------------------------------------

_TABLE = re.compile(r"^\s*\[\[?\s*(\S+?)\s*\]\]?")
_KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")
_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")


class _Lines:
    """Where keys are, by line: tomllib gives values only, diagnostics want line numbers."""

    def __init__(self, text: str):
        self.rules: list[int] = []          # line of each [[rule]] header
        self.keys: list[dict[str, int]] = []  # per rule: key → line
        self.top: dict[str, int] = {}
        current: dict[str, int] | None = self.top
        for n, line in enumerate(text.splitlines(), 1):
            table = _TABLE.match(line)
            if table and not _KEY.match(line):
                if line.lstrip().startswith("[[") and table.group(1) == "rule":
                    self.rules.append(n)
                    self.keys.append({})
                    current = self.keys[-1]
                else:
                    current = None
                continue
            key = _KEY.match(line)
            if key and current is not None:
                current.setdefault(next(g for g in key.groups() if g is not None), n)

    def rule(self, i: int, key: str | None = None) -> int | None:
        if i >= len(self.rules):
            return None
        return self.keys[i].get(key, self.rules[i]) if key else self.rules[i]


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    def distance(a: str, b: str) -> int:
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]

    scored = sorted((distance(name.lower(), c.lower()), c) for c in candidates)
    near = [c for d, c in scored
            if d <= (1 if len(name) <= 3 else 2) or (len(name) > 3 and name.lower() in c.lower())]
    return f"; did you mean `{near[0]}`?" if near else ""


def _strings(value, what: str, path: str, line: int | None) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(path, line, f"{what} must be a list of strings")
    return tuple(value)


def _regex(value, what: str, path: str, line: int | None) -> re.Pattern:
    if not isinstance(value, str):
        raise RulesError(path, line, f"{what} must be a regular expression in a string")
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise RulesError(path, line, f"invalid regular expression in {what}: {exc.msg} "
                         f"at position {exc.pos} of `{value}`") from None


def parse_rules(text: str, path: str) -> OutcomeRules:
    """Rules from TOML text; `path` names the file in errors. Raises RulesError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        at = _AT_LINE.search(msg)
        line = int(at.group(1)) if at else (len(text.splitlines()) or None) \
            if "end of document" in msg else None
        raise RulesError(path, line,
                         f"not valid TOML: {_AT_LINE.sub('', msg).strip()}") from None
    lines = _Lines(text)
    for key in data:
        if key not in TOP_KEYS:
            raise RulesError(path, lines.top.get(key), f"unknown key `{key}`"
                             f"{_did_you_mean(key, TOP_KEYS) or '; a rules file holds `precedence` and [[rule]] tables'}")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list) or not all(isinstance(r, dict) for r in raw_rules):
        raise RulesError(path, lines.top.get("rule"), "`rule` must be [[rule]] tables")
    if not raw_rules:
        raise RulesError(path, None, "no [[rule]] tables: a rules file needs at least one rule")
    rules = []
    for i, raw in enumerate(raw_rules):
        where = f"rule {i + 1}"
        for key in raw:
            if key not in RULE_KEYS:
                raise RulesError(path, lines.rule(i, key), f"unknown key `{key}` in {where}"
                                 f"{_did_you_mean(key, RULE_KEYS) or '; rule keys: ' + ', '.join(RULE_KEYS)}")
        cls = raw.get("class")
        if cls is None:
            raise RulesError(path, lines.rule(i), f"{where} has no `class`; add `class = \"merged\"` "
                             "(or another outcome class)")
        if not isinstance(cls, str) or not re.fullmatch(r"[A-Za-z_][\w-]*", cls):
            raise RulesError(path, lines.rule(i, "class"), f"the class of {where} must be a name, "
                             f"such as \"merged\", not {cls!r}")
        empty = raw.get("empty_reason")
        if empty is not None and not isinstance(empty, bool):
            raise RulesError(path, lines.rule(i, "empty_reason"), "empty_reason must be true or false")
        rules.append(Rule(
            cls=cls,
            close_reason=_regex(raw["close_reason"], "close_reason", path, lines.rule(i, "close_reason"))
            if "close_reason" in raw else None,
            status=_strings(raw["status"], "status", path, lines.rule(i, "status"))
            if "status" in raw else None,
            issue_type=_strings(raw["issue_type"], "issue_type", path, lines.rule(i, "issue_type"))
            if "issue_type" in raw else None,
            title=_regex(raw["title"], "title", path, lines.rule(i, "title")) if "title" in raw else None,
            empty_reason=empty, line=lines.rule(i)))
    if "precedence" in data:
        precedence = _strings(data["precedence"], "precedence", path, lines.top.get("precedence"))
        if not precedence:
            raise RulesError(path, lines.top.get("precedence"), "precedence is empty")
        for i, rule in enumerate(rules):
            if rule.cls != IGNORE and rule.cls not in precedence:
                raise RulesError(path, lines.rule(i, "class"), f"class `{rule.cls}` of rule {i + 1} "
                                 f"is not in precedence{_did_you_mean(rule.cls, precedence)}"
                                 " (add it to precedence, or fix the name)")
    else:
        default = DEFAULT_RULES.precedence if _DEFAULT_READY else ()
        used = [r.cls for r in rules if r.cls != IGNORE]
        precedence = tuple(c for c in default if c in used) + tuple(dict.fromkeys(
            c for c in used if c not in default))
    if UNKNOWN not in precedence:
        precedence += (UNKNOWN,)
    return OutcomeRules(tuple(rules), precedence, path)


def load_rules(path: str) -> OutcomeRules:
    """Rules from a file, or the shipped default for an empty path. Raises RulesError."""
    if not path:
        return DEFAULT_RULES
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise RulesError(path, None, f"cannot read the outcome rules: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RulesError(path, None, "the outcome rules are not UTF-8 text") from None
    return parse_rules(text, path)


_DEFAULT_READY = False
DEFAULT_RULES = parse_rules(DEFAULT_TEXT, "<gastown outcome rules>")
_DEFAULT_READY = True

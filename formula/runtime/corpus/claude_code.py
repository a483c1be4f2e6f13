"""Claude Code transcripts as Claude Code writes them: a tree of events, not a list of turns.

A session file (`<project>/<session-uuid>.jsonl`) holds one event per line. Events link by
`uuid`/`parentUuid`; the conversation the user ended up with is the chain from the newest event
back to the root. What that means for a loader, and what this one does:

- Rewinds fork the tree; the abandoned branch stays in the file. The live branch is the chain
  of the newest conversational event; with `branches = all` every abandoned branch is its own
  example (`<session>@<n>`).
- One API message is written as several events (one content block each, same `message.id`),
  and parallel tool calls hang off each other: the second call's parent is the first call, each
  result's parent is its own call. So the chain alone misses results: results whose call is on
  the chain are taken too, and every call's result follows its message, matched by id.
- A compaction (`compact_boundary`, `parentUuid` null) links back only by `logicalParentUuid`.
  It splits the session into segments (`<session>`, `<session>~2`, ...); a later segment starts
  from the compaction summary, a user turn that is context and never trained.
- Subagents are their own examples, `<session>/<agentId>`: 2.1 writes
  `<session>/subagents/agent-<id>.jsonl`, 2.0 wrote flat `agent-<id>.jsonl` beside the session
  and sometimes inline `isSidechain` events. Compaction agents (`agent-acompact-*`) re-send the
  whole conversation and warm-up agents say nothing: neither is an example.
- Not conversation, never a turn: `isMeta` events (caveats, skill bodies), slash-command and
  local-command text, `<task-notification>`, `[Request interrupted by user…]`, bash-mode input
  and output, synthetic assistant events (`isApiErrorMessage`, model `<synthetic>`), system,
  progress, attachment, snapshot and queue events.
- Images become `[image]`; ANSI escapes are removed; `thinking` blocks are dropped, or kept as
  `reasoning_content` with `thinking = keep`.
- A `--resume` that copied a session into a new file leaves the old file a prefix of the new
  one: the prefix is dropped as `resumed_copy`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from formula.contract.config import default_of
from formula.contract.steps import TranscriptSource

from .sessions import LoadError, Session

# Limits on input (docs/data.md; a formula changes them with `max_event`, `max_session` and
# `max_session_events`): a larger line is not a transcript event (a 50 MB blob stalls the step),
# and a transcript file past the others is not one session. Defaults: formula/contract/steps.py.
MAX_EVENT_BYTES: int = default_of(TranscriptSource, "max_event")
MAX_SESSION_BYTES: int = default_of(TranscriptSource, "max_session")
MAX_SESSION_EVENTS: int = default_of(TranscriptSource, "max_session_events")

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
NOT_CONVERSATION = re.compile(
    r"^\s*(?:<command-name>|<command-message>|<command-args>|<local-command-stdout>|"
    r"<local-command-stderr>|<local-command-caveat>|Caveat: The messages below were generated|"
    r"<bash-input>|<bash-stdout>|<bash-stderr>|<task-notification>|<user-memory-input>|"
    r"\[Request interrupted by user)")
AGENT_FILE = re.compile(r"^agent-(?P<id>[\w-]+)\.jsonl$")
CONVERSATION = ("user", "assistant")


@dataclass(frozen=True)
class Options:
    subagents: bool = True      # subagent transcripts as their own examples
    branches: str = "final"     # final | all (abandoned rewind branches as examples too)
    thinking: str = "drop"      # drop | keep (as `reasoning_content`)
    max_event_bytes: int = MAX_EVENT_BYTES
    max_session_bytes: int = MAX_SESSION_BYTES
    max_session_events: int = MAX_SESSION_EVENTS


@dataclass
class Stats:
    """What the loader read and set aside, for the corpus report."""

    files: Counter = field(default_factory=Counter)      # main, subagent, compaction_agent, ...
    events: Counter = field(default_factory=Counter)     # events left out, by kind
    examples: Counter = field(default_factory=Counter)   # session, segment, subagent, branch
    orphan_results: int = 0                              # results whose call is not in the example

    def merge(self, other: "Stats") -> None:
        self.files.update(other.files)
        self.events.update(other.events)
        self.examples.update(other.examples)
        self.orphan_results += other.orphan_results

    def to_json(self) -> dict:
        return {"files": dict(sorted(self.files.items())), "events_left_out": dict(sorted(self.events.items())),
                "examples": dict(sorted(self.examples.items())), "orphan_results": self.orphan_results}


# --- reading -------------------------------------------------------------------------------


def shown_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def read_events(path: str, on_error: str, skipped, max_bytes: int = MAX_EVENT_BYTES,
                max_file_bytes: int | None = None, max_events: int | None = None) -> list[tuple[int, dict]]:
    """(line number, event) for every JSON object line; bad lines fail or are skipped. A file
    over `max_file_bytes` or `max_events` (one Claude Code session) raises LoadError at the
    line that passes the limit, whatever `on_error` says: the caller skips the whole file."""
    events: list[tuple[int, dict]] = []
    with open(path, "rb") as fh:
        if max_file_bytes is not None and os.fstat(fh.fileno()).st_size > max_file_bytes:
            size, total = os.fstat(fh.fileno()).st_size, 0
            for n, raw in enumerate(fh, 1):
                total += len(raw)
                if total > max_file_bytes:
                    raise LoadError(path, n, f"the transcript is {shown_size(size)}, over the "
                                    f"{shown_size(max_file_bytes)} limit on one session file, passed at this "
                                    "line (`max_session` raises it)")
            fh.seek(0)
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            if max_events is not None and len(events) >= max_events:
                raise LoadError(path, n, f"more than {max_events:,} events in one transcript, the limit on "
                                "one session (`max_session_events` raises it)")
            try:
                if len(raw) > max_bytes:
                    raise ValueError(f"a {shown_size(len(raw))} line, over the {shown_size(max_bytes)} "
                                     "limit on one event (`max_event` raises it)")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ValueError(f"not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
                obj = json.loads(text)
                if not isinstance(obj, dict):
                    raise ValueError("expected a JSON object")
            except ValueError as exc:
                msg = str(exc) if str(exc).startswith(("a ", "not UTF-8", "expected")) else f"not valid JSON ({exc})"
                err = LoadError(path, n, msg)
                if on_error == "skip":
                    skipped.add(err)
                    continue
                raise err from None
            events.append((n, obj))
    return events


def _subagents_at(folders: tuple[str, ...]) -> int:
    return max(k for k, name in enumerate(folders) if name == "subagents")


def project_folder(path: str) -> str:
    """The project folder a Claude Code file lies in: a session, its subagents and a resume
    copy always share it."""
    p = Path(path)
    folders = p.parts[:-1]
    if "subagents" in folders:
        return str(Path(*folders[:_subagents_at(folders) - 1]))
    return str(p.parent)


def file_kind(path: str) -> tuple[str, str | None, str | None]:
    """(kind, parent session, agent id) from where Claude Code put the file."""
    p = Path(path)
    m = AGENT_FILE.match(p.name)
    if not m:
        return "main", None, None
    agent = m.group("id")
    if agent.startswith("acompact"):
        return "compaction_agent", None, agent
    folders = p.parts[:-1]
    if "subagents" in folders:  # 2.1: <session>/subagents/[workflows/<run>/]agent-<id>.jsonl
        return "subagent", folders[_subagents_at(folders) - 1], agent
    return "subagent", None, agent  # 2.0: flat beside the session; parent from its events


# --- the tree --------------------------------------------------------------------------------


class Tree:
    """Events of one transcript indexed by uuid, with the walks a loader needs."""

    def __init__(self, events: list[tuple[int, dict]]):
        self.events = events
        self.by_uuid: dict[str, tuple[int, dict]] = {}
        self.children: dict[str, list[str]] = defaultdict(list)
        for n, ev in events:
            u = ev.get("uuid")
            if isinstance(u, str):
                self.by_uuid[u] = (n, ev)
        for n, ev in events:
            p, u = ev.get("parentUuid"), ev.get("uuid")
            if isinstance(p, str) and isinstance(u, str):
                self.children[p].append(u)

    def chain(self, leaf: str) -> tuple[list[str], set[str]]:
        """uuids from the root to `leaf`, crossing compactions; and the compaction boundaries."""
        path, boundaries, seen = [], set(), set()
        u: str | None = leaf
        while u and u in self.by_uuid and u not in seen:
            seen.add(u)
            path.append(u)
            ev = self.by_uuid[u][1]
            parent = ev.get("parentUuid")
            if parent is None and is_boundary(ev):
                boundaries.add(u)
                parent = ev.get("logicalParentUuid")
            u = parent if isinstance(parent, str) else None
        path.reverse()
        return path, boundaries

    def with_results(self, path: list[str]) -> list[tuple[int, dict]]:
        """The chain's events plus tool results hanging off it (parallel calls, late results),
        in file order."""
        keep = set(path)
        calls = set()
        for u in path:
            calls.update(tool_use_ids(self.by_uuid[u][1]))
        for u in path:
            for c in self.children.get(u, ()):
                if c not in keep and result_ids(self.by_uuid[c][1]) & calls:
                    keep.add(c)
        return sorted((self.by_uuid[u] for u in keep), key=lambda x: x[0])

    def tips(self, sidechain: bool) -> list[str]:
        """Conversational events without conversational descendants, newest last."""
        out = []
        for n, ev in self.events:
            u = ev.get("uuid")
            if (isinstance(u, str) and ev.get("type") in CONVERSATION
                    and bool(ev.get("isSidechain")) == sidechain and not self._continues(u, sidechain)):
                out.append((ev.get("timestamp") or "", n, u))
        return [u for _, _, u in sorted(out)]

    def _continues(self, u: str, sidechain: bool) -> bool:
        stack, seen = list(self.children.get(u, ())), set()
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            ev = self.by_uuid[c][1]
            if bool(ev.get("isSidechain")) != sidechain:
                continue
            if ev.get("type") in CONVERSATION and not result_ids(ev):
                return True
            if is_boundary(ev):
                return True
            stack.extend(self.children.get(c, ()))
        return False


def is_boundary(ev: dict) -> bool:
    return ev.get("type") == "system" and ev.get("subtype") == "compact_boundary"


def blocks(ev: dict) -> list:
    msg = ev.get("message")
    content = msg.get("content") if isinstance(msg, dict) else None
    if isinstance(content, list):
        return content
    return [] if content is None else [content]


def tool_use_ids(ev: dict) -> set[str]:
    if ev.get("type") != "assistant":
        return set()
    return {i for b in blocks(ev) if isinstance(b, dict) and b.get("type") == "tool_use" and isinstance(i := b.get("id"), str)}


def result_ids(ev: dict) -> set[str]:
    if ev.get("type") != "user":
        return set()
    return {i for b in blocks(ev) if isinstance(b, dict) and b.get("type") == "tool_result"
            and isinstance(i := b.get("tool_use_id"), str)}


# --- events to messages ----------------------------------------------------------------------


def clean(text: str) -> str:
    return ANSI.sub("", text) if "\x1b" in text else text


def text_of(content, stats: Stats | None = None) -> str:
    """Text of a content string or block list; images and documents become placeholders."""
    if isinstance(content, str):
        return clean(content)
    parts = []
    for b in content if isinstance(content, list) else ():
        if isinstance(b, str):
            parts.append(clean(b))
        elif isinstance(b, dict):
            kind = b.get("type")
            if kind == "text":
                parts.append(clean(str(b.get("text", ""))))
            elif kind in ("image", "document"):
                parts.append(f"[{kind}]")
    return "\n".join(p for p in parts if p)


def to_messages(events: list[tuple[int, dict]], options: Options, stats: Stats,
                where: str) -> list[dict]:
    """OpenAI-shaped messages: one assistant message per API message, its calls' results after it."""
    items: list[dict] = []
    by_message: dict[str, dict] = {}
    results: dict[str, dict] = {}
    last_assistant: dict | None = None
    for n, ev in events:
        kind = ev.get("type")
        msg = ev.get("message")
        if kind not in CONVERSATION:
            stats.events[str(kind or "untyped")] += 1
            continue
        if not isinstance(msg, dict) or "content" not in msg:
            raise LoadError(where, n, f"a {kind} event without a `message.content`")
        if kind == "assistant":
            if ev.get("isApiErrorMessage") or msg.get("model") == "<synthetic>":
                stats.events["synthetic"] += 1
                continue
            mid = msg.get("id") if isinstance(msg.get("id"), str) else None
            target = by_message.get(mid) if mid else None
            if target is None and mid is None and last_assistant is not None:
                target = last_assistant  # old events without message ids: consecutive ones are one message
            if target is None:
                target = {"role": "assistant", "content": "", "_text": [], "_think": [], "tool_calls": []}
                items.append(target)
                if mid:
                    by_message[mid] = target
            last_assistant = target
            for b in blocks(ev):
                if isinstance(b, str):
                    target["_text"].append(clean(b))
                    continue
                if not isinstance(b, dict):
                    continue
                bt = b.get("type")
                if bt == "text":
                    target["_text"].append(clean(str(b.get("text", ""))))
                elif bt == "tool_use":
                    target["tool_calls"].append({"id": str(b.get("id", "")), "type": "function", "function": {
                        "name": str(b.get("name", "")),
                        "arguments": json.dumps(b.get("input", {}), sort_keys=True, ensure_ascii=False)}})
                elif bt == "thinking" and options.thinking == "keep" and b.get("thinking"):
                    target["_think"].append(str(b["thinking"]))
            continue
        # user events
        last_assistant = None
        if ev.get("isMeta") or (ev.get("isVisibleInTranscriptOnly") and not ev.get("isCompactSummary")):
            stats.events["meta"] += 1
            continue
        content = msg["content"]
        if ev.get("isCompactSummary"):
            items.append({"role": "user", "content": text_of(content)})
            continue
        texts = []
        for b in content if isinstance(content, list) else [content]:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                tid = str(b.get("tool_use_id", ""))
                res: dict[str, Any] = {"role": "tool", "tool_call_id": tid, "content": text_of(b.get("content", ""))}
                if b.get("is_error"):
                    res["is_error"] = True
                results[tid] = res
            else:
                t = text_of([b])
                if t and NOT_CONVERSATION.match(t):
                    stats.events["command_or_interrupt"] += 1
                    continue
                if t:
                    texts.append(t)
        if texts:
            items.append({"role": "user", "content": "\n".join(texts)})
    messages: list[dict] = []
    for m in items:
        if m["role"] == "assistant":
            m["content"] = "\n".join(t for t in m.pop("_text") if t)
            think = m.pop("_think")
            if think:
                m["reasoning_content"] = "\n".join(think)
            if not m["tool_calls"]:
                del m["tool_calls"]
            if not m["content"] and "tool_calls" not in m and "reasoning_content" not in m:
                continue  # only dropped thinking
            messages.append(m)
            for call in m.get("tool_calls", ()):
                if call["id"] in results:
                    messages.append(results.pop(call["id"]))
        else:
            messages.append(m)
    stats.orphan_results += len(results)
    return messages


# --- transcripts to sessions -----------------------------------------------------------------


def _meta(events: list[tuple[int, dict]]) -> dict:
    meta: dict = {}
    stamps = [ev["timestamp"] for _, ev in events if isinstance(ev.get("timestamp"), str)]
    if stamps:
        meta.update(start=min(stamps), end=max(stamps), date=min(stamps)[:10])
    for key, name in (("cwd", "cwd"), ("gitBranch", "branch"), ("version", "version")):
        value = next((ev[key] for _, ev in events if isinstance(ev.get(key), str) and ev[key]), None)
        if value:
            meta[name] = value
    return meta


def _segments(events: list[tuple[int, dict]], boundaries: set[str]) -> list[list[tuple[int, dict]]]:
    out: list[list[tuple[int, dict]]] = [[]]
    for item in events:
        if item[1].get("uuid") in boundaries:
            out.append([])
        else:
            out[-1].append(item)
    return [seg for seg in out if seg]


def _examples(tree: Tree, leaf: str, base_id: str, path: str, options: Options, stats: Stats,
              meta: dict) -> tuple[list[Session], set[str]]:
    chain, boundaries = tree.chain(leaf)
    events = tree.with_results(chain)
    out = []
    segments = _segments(events, boundaries)
    for k, seg in enumerate(segments, 1):
        messages = to_messages(seg, options, stats, path)
        if not messages:
            continue
        sid = base_id if k == 1 else f"{base_id}~{k}"
        seg_meta = {**meta, **_meta(seg)}
        if len(segments) > 1:
            seg_meta["segment"] = k
        out.append(Session(sid, messages, seg_meta, path, (seg[0][0], seg[-1][0])))
    return out, {u for _, ev in events if isinstance(u := ev.get("uuid"), str)}


def main_sessions(path: str, events: list[tuple[int, dict]], options: Options, stats: Stats) -> tuple[list[Session], set[str]]:
    """The live branch (and, if asked, abandoned branches) and inline sidechains of one file."""
    session = Path(path).stem
    if not any("parentUuid" in ev for _, ev in events):  # no tree (hand-written or exported files): file order
        main = [(n, ev) for n, ev in events if not ev.get("isSidechain")]
        msgs = to_messages(main, options, stats, path) if main else []
        if not msgs:
            return [], set()
        stats.examples["session"] += 1
        return [Session(session, msgs, {"kind": "session", "session": session, **_meta(main)}, path,
                        (main[0][0], main[-1][0]))], set()
    tree = Tree(events)
    tips = tree.tips(sidechain=False)
    if not tips:
        return [], set()
    base = {"kind": "session", "session": session}
    sessions, live = _examples(tree, tips[-1], session, path, options, stats, base)
    stats.examples["session"] += 1
    stats.examples["segment"] += max(0, len(sessions) - 1)
    if options.branches == "all":
        covered = set(live)
        for k, tip in enumerate(reversed(tips[:-1]), 1):
            if tip in covered:
                continue
            branch, uuids = _examples(tree, tip, f"{session}@{k}", path, options, stats, {**base, "branch_of": session})
            covered |= uuids
            sessions += branch
            stats.examples["branch"] += len(branch)
    elif len(tips) > 1:
        stats.events["abandoned_branch"] += len([t for t in tips[:-1] if t not in live])
    if options.subagents:
        groups: dict[str, list[str]] = defaultdict(list)
        for tip in tree.tips(sidechain=True):
            ev = tree.by_uuid[tip][1]
            groups[str(ev.get("agentId") or "")].append(tip)
        for k, (agent, agent_tips) in enumerate(sorted(groups.items()), 1):
            sub, _ = _examples(tree, agent_tips[-1], f"{session}/{agent or f'sidechain-{k}'}", path, options,
                               stats, {"kind": "subagent", "session": session, "parent": session})
            sessions += sub
            stats.examples["subagent"] += len(sub)
    return sessions, live


def subagent_sessions(path: str, events: list[tuple[int, dict]], parent: str | None, agent: str,
                      options: Options, stats: Stats) -> list[Session]:
    parent = parent or next((ev["sessionId"] for _, ev in events if isinstance(ev.get("sessionId"), str)), None)
    if parent is None:
        return []
    tree = Tree(events)
    tips = tree.tips(sidechain=True) or tree.tips(sidechain=False)
    if not tips:
        return []
    meta = {"kind": "subagent", "session": parent, "parent": parent}
    side = Path(path).with_suffix(".meta.json")
    if side.is_file():
        try:
            info = json.loads(side.read_text(encoding="utf-8"))
            if isinstance(info, dict) and isinstance(info.get("agentType"), str):
                meta["agent_type"] = info["agentType"]
        except (OSError, ValueError):
            pass
    sessions, _ = _examples(tree, tips[-1], f"{parent}/{agent}", path, options, stats, meta)
    if sessions and [m.get("content") for m in sessions[0].messages if m["role"] == "user"][:1] == ["Warmup"]:
        stats.files["warmup_agent"] += 1
        return []
    stats.examples["subagent"] += len(sessions)
    return sessions


def load(files: list[str], on_error: str, skipped, options: Options = Options(),
         stats: Stats | None = None) -> list[Session]:
    """Every example in a set of Claude Code files (a projects folder, or any glob of it)."""
    stats = stats if stats is not None else Stats()
    sessions: list[Session] = []
    lives: list[tuple[int, int, set[str]]] = []  # main files: (first session index, count, live uuids)
    for path in files:
        kind, parent, agent = file_kind(path)
        stats.files[kind] += 1
        if kind == "compaction_agent" or (kind == "subagent" and not options.subagents):
            continue
        try:
            events = read_events(path, on_error, skipped, options.max_event_bytes, options.max_session_bytes,
                                 options.max_session_events)
            if kind == "main":
                found, live = main_sessions(path, events, options, stats)
                lives.append((len(sessions), len(found), live))
            else:
                found = subagent_sessions(path, events, parent, agent or "", options, stats)
        except LoadError as err:
            if on_error != "skip":
                raise
            skipped.add(err)
            continue
        sessions += found
    return _without_resumed_copies(sessions, lives, stats)


def _without_resumed_copies(sessions: list[Session], lives, stats: Stats) -> list[Session]:
    """A file whose live branch is contained in another file's is a `--resume` copy."""
    owner: dict[str, list[int]] = defaultdict(list)
    for i, (_, _, live) in enumerate(lives):
        for u in live:
            owner[u].append(i)
    drop: set[int] = set()
    for i, (first, count, live) in enumerate(lives):
        if not live or not count:
            continue
        others = set.intersection(*(set(owner[u]) for u in live)) - {i}
        if any(len(lives[j][2]) > len(live) or (len(lives[j][2]) == len(live) and j < i) for j in others):
            drop.update(range(first, first + count))
            stats.files["resumed_copy"] += 1
    if not drop:
        return sessions
    return [s for k, s in enumerate(sessions) if k not in drop]

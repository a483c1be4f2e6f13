"""Loaders for the transcript formats a formula names, and the Gas Town projects folder."""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .sessions import LoadError, Session

ROLE_PATTERNS = (  # Gas Town roles from the agent's working directory, below the town root
    (re.compile(r"^mayor(/|$)"), "mayor"),
    (re.compile(r"^[^/]+/polecats/[^/]+(/|$)"), "polecat"),
    (re.compile(r"^[^/]+/witness(/|$)"), "witness"),
    (re.compile(r"^[^/]+/refinery(/|$)"), "refinery"),
    (re.compile(r"^[^/]+/crew/[^/]+(/|$)"), "crew"),
    (re.compile(r"^deacon(/|$)"), "deacon"),
    (re.compile(r"^boot(/|$)"), "boot"),
    (re.compile(r"^dogs?(/|$)"), "dog"),
)


@dataclass
class Skipped:
    """Lines dropped under `on_error = skip`, listed in the report."""

    items: list[dict] = field(default_factory=list)

    def add(self, err: LoadError) -> None:
        self.items.append({"file": err.path, "line": err.line, "error": err.message})


def role_from_cwd(cwd: str, town: str) -> str | None:
    town = os.path.expanduser(town).rstrip("/")
    if not cwd.startswith(town + "/") and cwd != town:
        return None
    rel = cwd[len(town):].lstrip("/")
    for pattern, role in ROLE_PATTERNS:
        if pattern.search(rel):
            return role
    return None


def _json_lines(path: str, on_error: str, skipped: Skipped) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("expected a JSON object")
                except ValueError as exc:
                    err = LoadError(path, n, f"not valid JSON ({exc})")
                    if on_error == "skip":
                        skipped.add(err)
                        continue
                    raise err from None
                yield n, obj
        except UnicodeDecodeError as exc:
            raise LoadError(path, 0, f"not UTF-8 text ({exc})") from None


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content
                         if not isinstance(b, dict) or b.get("type") in (None, "text"))
    return ""


def claude_code_session(path: str, on_error: str, skipped: Skipped) -> Session | None:
    """One Claude Code transcript (`<session>.jsonl`): events in order, as messages."""
    messages: list[dict] = []
    meta: dict = {}
    first = last = 0
    session_id = Path(path).stem
    for n, ev in _json_lines(path, on_error, skipped):
        kind = ev.get("type")
        if kind not in ("user", "assistant"):
            continue  # summaries, system events, file snapshots
        msg = ev.get("message")
        if not isinstance(msg, dict) or "content" not in msg:
            err = LoadError(path, n, f"a {kind} event without a `message.content`")
            if on_error == "skip":
                skipped.add(err)
                continue
            raise err
        first = first or n
        last = n
        session_id = ev.get("sessionId", session_id)
        for key, field_ in (("cwd", "cwd"), ("gitBranch", "branch"), ("timestamp", "date")):
            if ev.get(key) and field_ not in meta:
                meta[field_] = ev[key][:10] if field_ == "date" else ev[key]
        content = msg["content"]
        if kind == "assistant":
            text, calls = [], []
            for block in content if isinstance(content, list) else [{"type": "text", "text": content}]:
                btype = block.get("type")
                if btype == "text":
                    text.append(block.get("text", ""))
                elif btype == "tool_use":
                    calls.append({"id": block.get("id", ""), "type": "function", "function": {
                        "name": block.get("name", ""),
                        "arguments": json.dumps(block.get("input", {}), sort_keys=True)}})
            m: dict = {"role": "assistant", "content": "\n".join(t for t in text if t)}
            if calls:
                m["tool_calls"] = calls
            _append(messages, m)
        else:
            if isinstance(content, list) and any(b.get("type") == "tool_result" for b in content
                                                 if isinstance(b, dict)):
                for block in content:
                    if isinstance(block, dict) and block.get("type") == "tool_result":
                        messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id", ""),
                                         "content": _text_of(block.get("content", "")),
                                         **({"is_error": True} if block.get("is_error") else {})})
            else:
                _append(messages, {"role": "user", "content": _text_of(content)})
    if not messages:
        return None
    return Session(session_id, messages, meta, path, (first, last))


def _append(messages: list[dict], m: dict) -> None:
    """Claude Code splits one assistant turn over several events; join them."""
    if messages and messages[-1]["role"] == m["role"] == "assistant" and "tool_calls" not in messages[-1]:
        prev = messages[-1]
        prev["content"] = "\n".join(x for x in (prev["content"], m["content"]) if x)
        if "tool_calls" in m:
            prev["tool_calls"] = m["tool_calls"]
        return
    messages.append(m)


def chat_sessions(path: str, on_error: str, skipped: Skipped) -> Iterator[Session]:
    """Chat JSONL in the OpenAI `messages` shape, one conversation per line."""
    for n, obj in _json_lines(path, on_error, skipped):
        msgs = obj.get("messages")
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            err = LoadError(path, n, "expected {\"messages\": [{\"role\": ..., \"content\": ...}, ...]}")
            if on_error == "skip":
                skipped.add(err)
                continue
            raise err
        sid = str(obj.get("id") or obj.get("session") or f"{Path(path).stem}:{n}")
        meta = {k: v for k, v in obj.get("meta", {}).items()} if isinstance(obj.get("meta"), dict) else {}
        yield Session(sid, [dict(m) for m in msgs], meta, path, (n, n))


def text_sessions(path: str, on_error: str, skipped: Skipped) -> Iterator[Session]:
    """Plain text: the whole file is one assistant message (for language-model style data)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(path, 0, f"not UTF-8 text ({exc})") from None
    yield Session(Path(path).stem, [{"role": "assistant", "content": text}], {}, path,
                  (1, text.count("\n") + 1))


def pair_records(path: str, on_error: str, skipped: Skipped) -> Iterator[dict]:
    """Given preference pairs: {"prompt": messages or text, "chosen": ..., "rejected": ...}."""
    for n, obj in _json_lines(path, on_error, skipped):
        if not all(k in obj for k in ("prompt", "chosen", "rejected")):
            err = LoadError(path, n, "a pair needs `prompt`, `chosen` and `rejected`")
            if on_error == "skip":
                skipped.add(err)
                continue
            raise err
        yield {**obj, "provenance": {"source": path, "lines": [n, n]}}


def beads_outcomes(path: str) -> dict[str, dict]:
    """session id → {bead, outcome} from a beads JSONL export, via `closed_by_session`."""
    out: dict[str, dict] = {}
    skipped = Skipped()
    for n, rec in _json_lines(path, "fail", skipped):
        sid = rec.get("closed_by_session")
        if not sid:
            continue
        outcome = (rec.get("close_reason") or rec.get("status") or "").strip().lower() or None
        out[sid] = {"bead": rec.get("id"), "outcome": outcome}
    return out


def apply_meta_pattern(session: Session, pattern: str) -> None:
    """Named groups of a regex over the file path become metadata (`meta = pattern(...)`)."""
    m = re.search(pattern, session.source)
    if m:
        session.meta.update({k: v for k, v in m.groupdict().items() if v is not None})


def sidecar_meta(path: str) -> dict[str, dict]:
    skipped = Skipped()
    return {str(obj.get("session") or obj.get("id")): obj for _, obj in _json_lines(path, "fail", skipped)}


def files_of(pattern: str) -> list[str]:
    return sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


LOADERS: dict[str, Callable] = {"chat": chat_sessions, "text": text_sessions}

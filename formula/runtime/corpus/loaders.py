"""Loaders for the transcript formats a formula names other than Claude Code's (`claude_code.py`)."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .claude_code import MAX_EVENT_BYTES, read_events, shown_size
from .sessions import LoadError, Session

@dataclass
class Skipped:
    """Lines dropped under `on_error = skip`, listed in the report."""

    items: list[dict] = field(default_factory=list)

    def add(self, err: LoadError) -> None:
        self.items.append({"file": err.path, "line": err.line, "error": err.message})


def _json_lines(path: str, on_error: str, skipped: Skipped, max_event: int = MAX_EVENT_BYTES) -> Iterator[tuple[int, dict]]:
    return iter(read_events(path, on_error, skipped, max_event))


def chat_sessions(path: str, on_error: str, skipped: Skipped, max_event: int = MAX_EVENT_BYTES) -> Iterator[Session]:
    """Chat JSONL in the OpenAI `messages` shape, one conversation per line."""
    for n, obj in _json_lines(path, on_error, skipped, max_event):
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


def text_sessions(path: str, on_error: str, skipped: Skipped, max_event: int = MAX_EVENT_BYTES) -> Iterator[Session]:
    """Plain text: the whole file is one assistant message (for language-model style data), so
    `max_event` bounds the file."""
    size = os.path.getsize(path)
    if size > max_event:
        err = LoadError(path, 1, f"a {shown_size(size)} text file, over the {shown_size(max_event)} limit on one "
                        "event, which a text file is (`max_event` raises it)")
        if on_error == "skip":
            skipped.add(err)
            return
        raise err
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(path, 0, f"not UTF-8 text ({exc})") from None
    yield Session(Path(path).stem, [{"role": "assistant", "content": text}], {}, path,
                  (1, text.count("\n") + 1))


def pair_records(path: str, on_error: str, skipped: Skipped, max_event: int = MAX_EVENT_BYTES) -> Iterator[dict]:
    """Given preference pairs: {"prompt": messages or text, "chosen": ..., "rejected": ...}."""
    for n, obj in _json_lines(path, on_error, skipped, max_event):
        if not all(k in obj for k in ("prompt", "chosen", "rejected")):
            err = LoadError(path, n, "a pair needs `prompt`, `chosen` and `rejected`")
            if on_error == "skip":
                skipped.add(err)
                continue
            raise err
        yield {**obj, "provenance": {"source": path, "lines": [n, n]}}


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

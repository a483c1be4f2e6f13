"""Sessions as every loader returns them: OpenAI-shaped messages, metadata, provenance.

Claude Code transcripts are converted by a documented convention: user and assistant text
become `content`; an assistant's `tool_use` blocks become `tool_calls` (name and JSON arguments);
`tool_result` blocks become `tool` messages with their `tool_call_id`; `thinking` blocks are
dropped (they are not what the model should learn to print).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass
class Session:
    id: str
    messages: list[dict]
    meta: dict = field(default_factory=dict)
    source: str = ""          # file it came from
    lines: tuple[int, int] = (0, 0)  # first and last line (1-based) in that file

    @property
    def turns(self) -> int:
        """Exchanges started by the user (tool results do not count)."""
        return sum(1 for m in self.messages if m["role"] == "user")

    def text(self) -> str:
        """Everything the model would read or write, for length limits, dedup and scrubbing."""
        parts = []
        for m in self.messages:
            parts.append(m.get("content") or "")
            for call in m.get("tool_calls", ()):
                parts.append(call["function"]["name"] + " " + call["function"]["arguments"])
        return "\n".join(parts)

    def content_hash(self) -> str:
        return hashlib.blake2b(json.dumps(self.messages, sort_keys=True).encode(),
                               digest_size=16).hexdigest()

    def to_json(self) -> dict:
        return {"id": self.id, "messages": self.messages, "meta": self.meta,
                "provenance": {"source": self.source, "lines": list(self.lines),
                               "content_hash": self.content_hash()}}


class LoadError(Exception):
    """A malformed input line: names the file and line so the user can fix it."""

    def __init__(self, path: str, line: int, message: str):
        self.path, self.line, self.message = path, line, message
        super().__init__(f"{path}:{line}: {message}")

    def __reduce__(self):  # raised in a worker process, re-raised in the step
        return (LoadError, (self.path, self.line, self.message))

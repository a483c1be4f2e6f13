"""Quality gates: which sessions must not teach the model, each drop counted by its reason."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

from .sessions import Session

# How tools say a call failed when the result is not flagged `is_error`: Claude Code's own
# prefixes. A result that merely mentions "error" (a file read, a log) is not a failure.
FAILED_RESULT = re.compile(r"^\s*(?:<tool_use_error>|Exit code [1-9]\d*\b|Error: )")
GARBLED = re.compile(r"[\ufffd\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def is_garbled(text: str) -> bool:
    """Mostly replacement or control characters: a broken encoding, not language. ANSI colour
    codes are removed by the loaders before this runs, so coloured tool output is not garbled."""
    return len(text) >= 20 and len(GARBLED.findall(text)) > 0.05 * len(text)


def failed(result: dict) -> bool:
    return bool(result.get("is_error")) or bool(FAILED_RESULT.match(result.get("content") or ""))


def drop_reason(s: Session, min_turns: int, max_turns: int | None, max_repeats: int) -> str | None:
    assistant = [m for m in s.messages if m["role"] == "assistant"]
    if not any((m.get("content") or "").strip() or m.get("tool_calls") for m in assistant):
        return "no_assistant_output"
    if any(is_garbled(m.get("content") or "") for m in s.messages if m["role"] in ("user", "assistant")):
        return "garbled"
    if any(m["role"] in ("user", "assistant") and not (m.get("content") or "").strip()
           and not m.get("tool_calls") for m in s.messages):
        return "empty_turn"
    if s.turns < min_turns:
        return "too_few_turns"
    if max_turns is not None and s.turns > max_turns:
        return "too_many_turns"
    if failing_loop(s) >= max_repeats:
        return "failing_loop"
    return None


def failing_loop(s: Session) -> int:
    """The most times one identical tool call (same tool, same arguments) failed in this session."""
    calls = {}
    for m in s.messages:
        for c in m.get("tool_calls", ()):
            calls[c.get("id")] = (c["function"]["name"], c["function"]["arguments"])
    failures: Counter = Counter()
    for m in s.messages:
        if m["role"] == "tool" and failed(m):
            call = calls.get(m.get("tool_call_id"))
            if call is not None:
                failures[call] += 1
    return max(failures.values(), default=0)


def shingles(text: str, n: int = 5) -> set[bytes]:
    words = text.split()
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def near_duplicates(sessions: list[Session], threshold: float, num_perm: int = 128) -> set[int]:
    """Indexes of sessions that are near-duplicates (MinHash Jaccard ≥ threshold) of an earlier one."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    dropped = set()
    for i, s in enumerate(sessions):
        mh = MinHash(num_perm=num_perm, seed=1)
        mh.update_batch(list(shingles(s.text())))
        if lsh.query(mh):
            dropped.add(i)
            continue
        lsh.insert(str(i), mh)
    return dropped


def in_holdout(session_id: str, share: float) -> bool:
    """Chosen by a hash of the session id alone, so adding sessions never moves an old one."""
    if share <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=8).digest(), "big")
    return h / 2**64 < share

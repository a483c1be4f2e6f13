"""Next-action evaluation on held-out sessions: for every assistant turn, the conversation so far
is the prompt and the turn the agent really took is the reference (docs/export.md).

This module is the part that knows no model: which turns are asked, how a model's output is read
(the templates' `<tool_call>` convention, `formula/contract/templates.py`), how a turn is scored
and how scores add up per session, role and outcome. The engines that generate (transformers in
`formula/runtime/steps/eval.py`, llama.cpp in `formula/runtime/export/llama.py`) and the
intervals (`formula/runtime/bootstrap.py`) are elsewhere.

Figures, each a share of turns (micro-averaged; a session's turns add up as one unit for the
bootstrap):

    tool_accuracy    turns whose reference calls a tool: the model's first call names that tool
    args_exact       those turns: same tool, and arguments equal as JSON values
    args_similarity  those turns: same tool, and `json_similarity` of the arguments (else 0)
    text_similarity  turns whose reference is a text reply (no call): chrF of the model's text
    stop_accuracy    every turn: the model did what the agent did, end its turn with a text reply
                     (end-of-turn token, no call) or call a tool (a call counts even cut off)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FIGURES = ("tool_accuracy", "args_exact", "args_similarity", "text_similarity", "stop_accuracy")
# Which turns each figure is over: "call" (the reference calls a tool), "reply", "all".
OVER = {"tool_accuracy": "call", "args_exact": "call", "args_similarity": "call",
        "text_similarity": "reply", "stop_accuracy": "all"}
BUDGET_SLACK = 16  # tokens a model may write beyond twice the reference's length


def budget(reference_tokens: int, max_new_tokens: int) -> int:
    """Tokens a model may generate for one turn: twice the reference's length and a little more,
    at most `max_new_tokens`. An answer much longer than the agent's is scored wrong anyway (it
    did not stop where the agent did), and a model that never stops would otherwise cost
    `max_new_tokens` on every turn."""
    return max(1, min(max_new_tokens, 2 * reference_tokens + BUDGET_SLACK))


@dataclass
class Turn:
    session: str
    index: int  # of the reference in the session's messages
    role: str | None
    outcome: str | None
    prompt: list[dict]  # messages before the turn
    reference: dict  # the assistant message


def session_order(session_id: str) -> str:
    """Sessions are taken in the order of a hash of their id (a cap then keeps a sample that does
    not depend on file order, and adding sessions rarely changes which are taken)."""
    return hashlib.blake2b(session_id.encode(), digest_size=8).hexdigest()


def turns(sessions: list[dict], max_turns: int) -> list[Turn]:
    """Every assistant turn of the sessions, whole sessions at a time until `max_turns` (the
    first session is always taken), the turns of one session consecutive and in order (the
    engines reuse the shared prefix)."""
    out: list[Turn] = []
    for s in sorted(sessions, key=lambda s: (session_order(str(s["id"])), str(s["id"]))):
        messages = s.get("messages") or []
        mine = [Turn(str(s["id"]), i, (s.get("meta") or {}).get("role"),
                     (s.get("meta") or {}).get("outcome"), messages[:i], m)
                for i, m in enumerate(messages) if m.get("role") == "assistant" and i > 0]
        if not mine:
            continue
        if out and len(out) + len(mine) > max_turns:
            break
        out += mine
    return out


# --- reading actions ---------------------------------------------------------------------------

@dataclass
class Action:
    text: str  # what the turn says to the user, tool calls taken out
    calls: list[tuple[str | None, Any]] = field(default_factory=list)  # (name, arguments)
    raw_args: list[str] = field(default_factory=list)  # the arguments as written (unparsed ones)
    ended: bool = True  # the turn was ended (end-of-turn token), not cut off

    @property
    def kind(self) -> str:
        """"call", "reply" (ended without a call), or "cut" (cut off before either)."""
        if self.calls:
            return "call"
        return "reply" if self.ended else "cut"


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def reference_action(message: dict) -> Action:
    calls, raw = [], []
    for c in message.get("tool_calls") or []:
        fn = c.get("function") or c
        args = fn.get("arguments")
        calls.append((fn.get("name"), _arguments(args)))
        raw.append(args if isinstance(args, str) else json.dumps(args, ensure_ascii=False))
    return Action(str(message.get("content") or ""), calls, raw, True)


_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*(.*)', re.S)
_BARE = re.compile(r'^\s*(\{\s*"name"\s*:.*\})\s*$', re.S)  # llama3's convention: the JSON alone


def parse_output(text: str, ended: bool) -> Action:
    """A model's turn read the way the templates write calls: `<tool_call>\\n{"name": ...,
    "arguments": ...}\\n</tool_call>` (a whole output that is one `{"name", "parameters"}` object,
    llama3's way, counts too). A call cut off or malformed still gives its name when `"name":
    "..."` was written, and its arguments text for `args_similarity`."""
    calls, raw = [], []
    blocks = list(_CALL.finditer(text))
    bodies = [m.group(1) for m in blocks]
    rest = _CALL.sub("", text) if blocks else text
    if not blocks:
        bare = _BARE.match(text)
        if bare:
            bodies, rest = [bare.group(1)], ""
    for body in bodies:
        try:
            call = json.loads(body)
        except ValueError:
            call = None
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            args = call.get("arguments", call.get("parameters"))
            calls.append((call["name"], _arguments(args)))
            raw.append(args if isinstance(args, str) else json.dumps(args, ensure_ascii=False))
            continue
        name = _NAME.search(body)
        if name is None:
            continue
        args_text = _ARGS.search(body)
        tail = args_text.group(1).rstrip() if args_text else ""
        tail = tail[:-1] if tail.endswith("}") and tail.count("{") < tail.count("}") else tail
        try:
            parsed_name = json.loads(f'"{name.group(1)}"')
        except ValueError:
            parsed_name = name.group(1)
        calls.append((parsed_name, _Unparsed(tail)))
        raw.append(tail)
    return Action(rest.strip(), calls, raw, ended)


@dataclass(frozen=True)
class _Unparsed:
    """Arguments that are not JSON (cut off, malformed): equal to nothing, similar as text."""

    text: str


def render(action: Action) -> str:
    """A turn as the templates write it, for reports."""
    parts = [action.text] if action.text else []
    for (name, args), raw in zip(action.calls, action.raw_args):
        parts.append("<tool_call>" + json.dumps({"name": name}, ensure_ascii=False)[:-1]
                     + ', "arguments": ' + raw + "}</tool_call>")
    return "\n".join(parts)


# --- similarity --------------------------------------------------------------------------------

CHRF_ORDER = 6
CHRF_BETA = 2.0


def _ngrams(text: str, n: int) -> Counter:
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf(hypothesis: str, reference: str) -> float:
    """chrF (Popović, 2015), 0 to 1: character n-grams of orders 1 to 6, whitespace removed,
    the F-score with β = 2 (recall weighs more) per order, averaged over the orders both texts are
    long enough for (sacrebleu's chrF without word n-grams). Two empty texts score 1, one 0."""
    hyp, ref = re.sub(r"\s+", "", hypothesis), re.sub(r"\s+", "", reference)
    if not hyp or not ref:
        return 1.0 if hyp == ref else 0.0
    if hyp == ref:
        return 1.0
    b2 = CHRF_BETA ** 2
    total, orders = 0.0, 0
    for n in range(1, CHRF_ORDER + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        if not h or not r:
            continue
        orders += 1
        match = sum((h & r).values())
        if not match:
            continue
        p, rc = match / sum(h.values()), match / sum(r.values())
        total += (1 + b2) * p * rc / (b2 * p + rc)
    return total / orders if orders else 0.0


def json_similarity(hypothesis: Any, reference: Any) -> float:
    """How alike two JSON values are, 0 to 1: objects average over the union of their keys (a
    missing key scores 0), arrays over the longer one's positions, strings by `chrf`, other
    values (numbers, booleans, null) 1 when equal; values of different types 0. Arguments that
    did not parse are compared as text with the reference's JSON."""
    if isinstance(hypothesis, _Unparsed):
        ref = reference if isinstance(reference, str) else json.dumps(reference, ensure_ascii=False)
        return chrf(hypothesis.text, ref)
    if isinstance(hypothesis, dict) and isinstance(reference, dict):
        keys = set(hypothesis) | set(reference)
        if not keys:
            return 1.0
        return sum(json_similarity(hypothesis[k], reference[k]) if k in hypothesis and k in reference
                   else 0.0 for k in keys) / len(keys)
    if isinstance(hypothesis, list) and isinstance(reference, list):
        n = max(len(hypothesis), len(reference))
        if not n:
            return 1.0
        return sum(json_similarity(h, r) for h, r in zip(hypothesis, reference)) / n
    if isinstance(hypothesis, str) and isinstance(reference, str):
        return chrf(hypothesis, reference)
    if isinstance(hypothesis, bool) or isinstance(reference, bool):
        return 1.0 if hypothesis is reference else 0.0
    if isinstance(hypothesis, (int, float)) and isinstance(reference, (int, float)):
        return 1.0 if hypothesis == reference else 0.0
    return 1.0 if hypothesis is None and reference is None else 0.0


def json_equal(hypothesis: Any, reference: Any) -> bool:
    if isinstance(hypothesis, _Unparsed):
        return False
    return json.dumps(hypothesis, sort_keys=True) == json.dumps(reference, sort_keys=True)


# --- scoring -----------------------------------------------------------------------------------

def score(reference: Action, output: Action) -> dict[str, float | None]:
    """One turn's scores; None where the figure is not over this kind of turn."""
    s: dict[str, float | None] = dict.fromkeys(FIGURES)
    if reference.calls:
        ref_name, ref_args = reference.calls[0]
        same = bool(output.calls) and output.calls[0][0] == ref_name
        s["tool_accuracy"] = float(same)
        s["args_exact"] = float(same and json_equal(output.calls[0][1], ref_args))
        s["args_similarity"] = json_similarity(output.calls[0][1], ref_args) if same else 0.0
        s["stop_accuracy"] = float(output.kind == "call")
    else:
        s["text_similarity"] = chrf(output.text, reference.text)
        s["stop_accuracy"] = float(output.kind == "reply")
    return s


def tally(scored: list[tuple[Turn, dict]]) -> dict[str, Any]:
    """Per-session sums, the unit of the bootstrap: {"units": [session ids], "stats": {figure:
    ([sum], [count])}}, sessions in first-seen order."""
    index: dict[str, int] = {}
    sums: dict[str, list[float]] = {f: [] for f in FIGURES}
    counts: dict[str, list[float]] = {f: [] for f in FIGURES}
    for turn, s in scored:
        if turn.session not in index:
            index[turn.session] = len(index)
            for f in FIGURES:
                sums[f].append(0.0)
                counts[f].append(0.0)
        i = index[turn.session]
        for f in FIGURES:
            v = s.get(f)
            if v is not None:
                sums[f][i] += v
                counts[f][i] += 1
    return {"units": list(index), "stats": {f: (sums[f], counts[f]) for f in FIGURES}}


def value(sums: list[float], counts: list[float]) -> float:
    n = sum(counts)
    return sum(sums) / n if n else math.nan

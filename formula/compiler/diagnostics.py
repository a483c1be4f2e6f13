"""Diagnostics are values: a severity, a stable code, a span and some help.

Passes collect them in lists; renderers turn them into text (rustc-like), JSON or GitHub
workflow annotations. Nothing here raises for a user's mistake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Sequence

from .source import Span, printable


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Label:
    """A secondary span with a short message ("first defined here")."""

    span: Span
    message: str


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    code: str
    message: str
    span: Span | None
    label: str = ""
    labels: tuple[Label, ...] = ()
    help: str = ""
    notes: tuple[str, ...] = ()

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def error(code: str, message: str, span: Span | None, label: str = "", *, help: str = "",
          labels: Sequence[Label] = (), notes: Sequence[str] = ()) -> Diagnostic:
    return Diagnostic(Severity.ERROR, code, message, span, label, tuple(labels), help, tuple(notes))


def warning(code: str, message: str, span: Span | None, label: str = "", *, help: str = "",
            labels: Sequence[Label] = (), notes: Sequence[str] = ()) -> Diagnostic:
    return Diagnostic(Severity.WARNING, code, message, span, label, tuple(labels), help, tuple(notes))


# ---------------------------------------------------------------------------------------------
# "did you mean"


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (a transposition counts as one edit)."""
    if a == b:
        return 0
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def near_names(name: str, candidates: Iterable[str], limit: int = 4) -> list[str]:
    """Names within edit distance 2 (1 for short names), closest first, at most `limit`."""
    budget = 1 if len(name) <= 3 else 2
    scored = []
    for cand in set(candidates):
        if cand == name:
            continue
        d = edit_distance(name.lower(), cand.lower())
        if d <= budget or (len(name) > 3 and (cand.startswith(name) or name.startswith(cand))):
            scored.append((d, cand))
    return [c for _, c in sorted(scored)[:limit]]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    near = near_names(name, candidates)
    if not near:
        return ""
    if len(near) == 1:
        return f"did you mean `{near[0]}`?"
    return "did you mean one of " + ", ".join(f"`{n}`" for n in near) + "?"


def one_of(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names))


# ---------------------------------------------------------------------------------------------
# Rendering


def sort_key(d: Diagnostic) -> tuple:
    if d.span is None:
        return ("", 0, 0)
    return (d.span.source.path, d.span.start, d.span.end)


MAX_LINE = 150  # longer source lines are shown as a window around the span
MAX_SPAN_LINES = 6  # a longer span shows its first and last lines


def _window(text: str, start: int, end: int) -> tuple[str, int, int]:
    """A line cut to MAX_LINE columns around [start, end), and the span's columns in it."""
    if len(text) <= MAX_LINE:
        return text, start, end
    lo = max(0, min(start - 40, len(text) - MAX_LINE))
    hi = lo + MAX_LINE
    shown = ("…" if lo else "") + text[lo:hi] + ("…" if hi < len(text) else "")
    shift = 1 if lo else 0
    return shown, max(0, start - lo) + shift, max(0, min(end, hi) - lo) + shift


def _snippet(span: Span, marker: str, message: str, gutter: int) -> list[str]:
    src = span.source
    lines = []
    pad = " " * gutter
    last_line = min(span.end_line, src.line_count)
    numbers = list(range(span.line, last_line + 1))
    if len(numbers) > MAX_SPAN_LINES:
        numbers = numbers[:3] + [0] + numbers[-2:]
    for line_no in numbers:
        if line_no == 0:
            lines.append(f"{'.' * gutter} |")
            continue
        text = printable(src.line_text(line_no))
        start = span.column - 1 if line_no == span.line else len(text) - len(text.lstrip())
        end = span.end_column - 1 if line_no == span.end_line else len(text)
        if span.end > span.start and line_no == span.end_line and end <= start and line_no != span.line:
            break  # a span ending at column 1 does not reach into this line
        text, start, end = _window(text, start, end)
        lines.append(f"{str(line_no).rjust(gutter)} | {text}".rstrip())
        width = max(1, end - start)
        tail = f" {message}" if message and line_no == last_line else ""
        lines.append(f"{pad} | {' ' * start}{marker * width}{tail}".rstrip())
    return lines


def render_one(d: Diagnostic) -> str:
    head = f"{d.severity.value}[{d.code}]: {d.message}"
    if d.span is None:
        out = [head]
        if d.help:
            out.append(f"  = help: {d.help}")
        out.extend(f"  = note: {n}" for n in d.notes)
        return "\n".join(out)
    spans = [d.span] + [lab.span for lab in d.labels]
    gutter = len(str(max(s.end_line for s in spans)))
    pad = " " * gutter
    out = [head, f"{pad}--> {d.span.source.path}:{d.span.line}:{d.span.column}", f"{pad} |"]
    out.extend(_snippet(d.span, "^", d.label, gutter))
    for lab in d.labels:
        if lab.span.source is not d.span.source:
            out.append(f"{pad}::: {lab.span.source.path}:{lab.span.line}:{lab.span.column}")
        out.append(f"{pad} |")
        out.extend(_snippet(lab.span, "-", lab.message, gutter))
    if d.help or d.notes:
        out.append(f"{pad} |")
    if d.help:
        out.append(f"{pad} = help: {d.help}")
    out.extend(f"{pad} = note: {n}" for n in d.notes)
    return "\n".join(out)


def summary_line(diagnostics: Sequence[Diagnostic]) -> str:
    errors = sum(d.is_error for d in diagnostics)
    warnings = len(diagnostics) - errors
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return ", ".join(parts)


def render_text(diagnostics: Sequence[Diagnostic], color: bool = False) -> str:
    blocks = [render_one(d) for d in sorted(diagnostics, key=sort_key)]
    text = "\n\n".join(blocks)
    if color:
        text = _colorize(text)
    return text


def _colorize(text: str) -> str:
    red, yellow, blue, bold, reset = "\x1b[31m", "\x1b[33m", "\x1b[34m", "\x1b[1m", "\x1b[0m"
    out = []
    for line in text.split("\n"):
        if line.startswith("error"):
            head, _, rest = line.partition(":")
            line = f"{bold}{red}{head}{reset}{bold}:{rest}{reset}"
        elif line.startswith("warning"):
            head, _, rest = line.partition(":")
            line = f"{bold}{yellow}{head}{reset}{bold}:{rest}{reset}"
        elif "|" in line[:8] or line.lstrip().startswith(("-->", ":::", "=")):
            gutter, sep, rest = line.partition("|") if "|" in line[:8] else (line, "", "")
            line = f"{blue}{gutter}{sep}{reset}{rest}" if sep else f"{blue}{line}{reset}"
        out.append(line)
    return "\n".join(out)


def to_json(d: Diagnostic) -> dict:
    obj: dict = {"severity": d.severity.value, "code": d.code, "message": d.message}
    if d.span is not None:
        obj.update(file=d.span.source.path, line=d.span.line, column=d.span.column,
                   end_line=d.span.end_line, end_column=d.span.end_column)
    if d.label:
        obj["label"] = d.label
    if d.help:
        obj["help"] = d.help
    if d.notes:
        obj["notes"] = list(d.notes)
    if d.labels:
        obj["labels"] = [{"file": lab.span.source.path, "line": lab.span.line,
                          "column": lab.span.column, "message": lab.message} for lab in d.labels]
    return obj


def render_json(diagnostics: Sequence[Diagnostic]) -> str:
    return json.dumps([to_json(d) for d in sorted(diagnostics, key=sort_key)], indent=2)


def _gh_escape(text: str, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def render_github(diagnostics: Sequence[Diagnostic]) -> str:
    """GitHub Actions workflow commands: one annotation per diagnostic."""
    lines = []
    for d in sorted(diagnostics, key=sort_key):
        level = "error" if d.is_error else "warning"
        message = d.message + (f"\nhelp: {d.help}" if d.help else "")
        if d.span is None:
            lines.append(f"::{level} title={_gh_escape(d.code, True)}::{_gh_escape(message)}")
            continue
        props = (f"file={_gh_escape(d.span.source.path, True)},line={d.span.line},"
                 f"endLine={d.span.end_line},col={d.span.column},endColumn={d.span.end_column},"
                 f"title={_gh_escape(d.code, True)}")
        lines.append(f"::{level} {props}::{_gh_escape(message)}")
    return "\n".join(lines)

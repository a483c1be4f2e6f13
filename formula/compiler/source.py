"""Source texts and spans: every diagnostic and AST node points back into one of these."""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass, field

BOM = "\ufeff"


@dataclass(frozen=True, eq=False)
class Source:
    """One text the compiler read: a formula file, or the command line's overrides."""

    path: str
    text: str
    _line_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = [0] + [m.end() for m in re.finditer("\n", self.text)]
        object.__setattr__(self, "_line_starts", tuple(starts))

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset."""
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def line_text(self, line: int) -> str:
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        return self.text[start : end if end >= 0 else len(self.text)].rstrip("\r")

    @property
    def line_count(self) -> int:
        return len(self._line_starts)

    def span(self, start: int, end: int) -> Span:
        return Span(self, start, max(end, start))

    def __repr__(self) -> str:
        return f"Source({self.path!r})"


@dataclass(frozen=True, eq=False)
class Span:
    """A half-open character range [start, end) of a source."""

    source: Source
    start: int
    end: int

    @property
    def line(self) -> int:
        return self.source.line_col(self.start)[0]

    @property
    def column(self) -> int:
        return self.source.line_col(self.start)[1]

    @property
    def end_line(self) -> int:
        return self.source.line_col(self.end)[0]

    @property
    def end_column(self) -> int:
        return self.source.line_col(self.end)[1]

    @property
    def text(self) -> str:
        return self.source.text[self.start : self.end]

    def to(self, other: Span) -> Span:
        """The span from the start of this one to the end of `other`."""
        return Span(self.source, min(self.start, other.start), max(self.end, other.end))

    def __repr__(self) -> str:
        return f"{self.source.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Undecodable:
    """Why a file's bytes are not a formula's text: where, and what was found there."""

    offset: int  # a character offset into `text`
    byte: int
    binary: bool


def decode(data: bytes | str) -> tuple[str, Undecodable | None]:
    """A file's bytes as text: UTF-8, a leading byte-order mark dropped.

    Bytes that are not UTF-8 are replaced by U+FFFD in the text, and the first of them is
    reported, so that a diagnostic can point at its line.
    """
    if isinstance(data, str):
        return (data[1:] if data.startswith(BOM) else data), None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        text = data.decode("utf-8", errors="replace")
        offset = len(data[: exc.start].decode("utf-8"))
        binary = b"\x00" in data[:8192]
        return text, Undecodable(offset, data[exc.start], binary)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def printable(line: str) -> str:
    """A source line as it can be shown in a terminal: control characters as their symbols
    (U+2400 and on), one column each, so that markers under the line still line up."""
    return _CONTROL.sub(lambda m: chr(0x2421) if m.group() == "\x7f" else chr(0x2400 + ord(m.group())),
                        line)


def char_name(ch: str) -> str:
    """`U+00A0 (NO-BREAK SPACE)`: how a diagnostic names a character one may not see."""
    name = unicodedata.name(ch, "")
    if not name and ord(ch) < 0x20:
        name = {0: "NUL", 9: "TAB", 13: "CARRIAGE RETURN"}.get(ord(ch), "control character")
    return f"U+{ord(ch):04X}" + (f" ({name})" if name else "")

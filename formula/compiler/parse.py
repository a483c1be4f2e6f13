"""Text → AST. The only module that sees Lark.

Syntax errors become diagnostics; after each one the parser skips to the next top-level item
(a line that starts in column 1) and goes on, so one run reports several mistakes.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Tree, v_args
from lark.visitors import Transformer_NonRecursive
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lark import PostLex

from . import ast
from .diagnostics import Diagnostic, Label, error
from .source import BOM, Source, Span, char_name

GRAMMAR = Path(__file__).with_name("grammar.lark")
# Codes of the diagnostics parsing gives: after any of them the file is not checked further,
# since what is left of it would only echo the mistake.
PARSE_CODES = frozenset({"syntax", "confusable", "too-deep", "encoding"})
MAX_SYNTAX_ERRORS = 20
# Expressions nest at most this deep (each operator of a chain is a level); every later pass
# walks expressions recursively, and this keeps them far from Python's recursion limit.
MAX_DEPTH = 100


class NewlineFilter(PostLex):
    """Drops newlines inside () and [], and collapses runs of newlines into one."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        last_nl = True  # a newline at the very start is dropped too
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif tok.type == "_NL":
                if depth or last_nl:
                    continue
                last_nl = True
                yield tok
                continue
            last_nl = False
            yield tok


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR.read_text(), parser="lalr", lexer="contextual", postlex=NewlineFilter(),
                propagate_positions=True, maybe_placeholders=True, start=["start", "expr"],
                cache=True)


def parse(source: Source) -> tuple[ast.Module, list[Diagnostic]]:
    """Parse a whole formula. Returns the AST of what parsed and the syntax errors."""
    text = source.text
    if text.startswith(BOM):
        text = " " + text[1:]  # a byte-order mark is not part of the formula
    text, diagnostics = _confusables(source, text)
    comments: list[Token] = []
    while True:
        comments.clear()
        try:
            tree = _parse_collecting(text, comments)
            break
        except UnexpectedInput as exc:
            diagnostics.append(_syntax_diagnostic(source, text, exc))
            offset = _error_offset(exc, text)
            blanked = _repair(text, offset) if isinstance(exc, UnexpectedCharacters) else None
            if blanked is None:
                blanked = _skip_item(text, offset, _opening(text, offset))
            if blanked == text or len(diagnostics) >= MAX_SYNTAX_ERRORS:
                tree = None
                break
            text = blanked
    items = []
    if tree is not None:
        for child in tree.children:
            if isinstance(child, Tree) and _too_deep(source, child, diagnostics):
                continue
            items.append(_ToAst(source).transform(child))
    module = ast.Module(
        source=source,
        items=tuple(items),
        comments=tuple(ast.Comment(c.value, source.span(c.start_pos or 0, c.end_pos or 0))
                       for c in comments),
        span=source.span(0, len(source.text)),
    )
    return module, diagnostics


def _parse_collecting(text: str, comments: list[Token]):
    # Lark's lexer callbacks are fixed when the parser is built; a fresh lexer conf per call
    # would lose the cache, so comments are read off the token stream here instead.
    parser = _parser()
    comments.extend(_COMMENT.finditer_tokens(text))
    return parser.parse(text, start="start")


class _CommentScanner:
    """Finds comments the way the lexer does: a `#` outside a string, to the end of line."""

    _pattern = re.compile(r'"(?:[^"\\\n]|\\.)*"?|(#[^\n]*)')

    def finditer_tokens(self, text: str):
        for m in self._pattern.finditer(text):
            if m.group(1) is not None:
                yield Token("COMMENT", m.group(1), start_pos=m.start(1), end_pos=m.end(1))


_COMMENT = _CommentScanner()


def parse_expression(source: Source) -> tuple[ast.Expr | None, list[Diagnostic]]:
    """Parse one expression (a command-line override's value)."""
    try:
        tree = _parser().parse(source.text, start="expr")
    except UnexpectedInput as exc:
        return None, [_syntax_diagnostic(source, source.text, exc)]
    diagnostics: list[Diagnostic] = []
    if isinstance(tree, Tree) and _too_deep(source, tree, diagnostics):
        return None, diagnostics
    return _ToAst(source).transform(tree), []


def undecodable(path: str, text: str, bad) -> Diagnostic:
    """The diagnostic for a file whose bytes are not UTF-8 (`source.decode` found where)."""
    span = Source(path, text).span(bad.offset, bad.offset + 1)
    if bad.binary:
        return error("encoding", f"`{path}` is a binary file, not a formula", span,
                     f"byte 0x{bad.byte:02X} is not text", help="formulas are UTF-8 text; check the path")
    return error("encoding", f"`{path}` is not UTF-8 text", span, f"byte 0x{bad.byte:02X} is not UTF-8",
                 help="save the file as UTF-8 (a Latin-1 file converts with `iconv -f latin1 -t utf-8`)")


# --- limits ------------------------------------------------------------------------------------

_EXPR_RULES = frozenset({"where", "or_", "and_", "not_", "compare", "contains", "binop", "neg",
                         "attr", "call", "list", "sub_block"})  # blocks in blocks nest too


def _too_deep(source: Source, tree: Tree, diagnostics: list[Diagnostic]) -> bool:
    """Report an expression nested deeper than MAX_DEPTH in this item (walked without
    recursion, as any size of input may come here)."""
    deepest, outer = 0, None
    stack: list[tuple[Tree, int, Tree | None]] = [(tree, 0, None)]
    while stack:
        node, depth, top = stack.pop()
        if node.data in _EXPR_RULES:
            depth += 1
            top = top or node
            if depth > deepest:
                deepest, outer = depth, top
        stack.extend((c, depth, top) for c in node.children if isinstance(c, Tree))
    if deepest <= MAX_DEPTH or outer is None:
        return False
    start = getattr(outer.meta, "start_pos", 0) or 0
    end = getattr(outer.meta, "end_pos", start) or start
    line_end = source.text.find("\n", start)
    if line_end >= 0:
        end = min(end, line_end)
    what = "blocks nest" if outer.data == "sub_block" else "this expression nests"
    diagnostics.append(error(
        "too-deep", f"{what} {deepest} levels deep; the limit is {MAX_DEPTH}",
        source.span(start, end), "nested too deeply",
        help="each operator, `not`, `-`, call, `.` and `[` adds a level; write it more simply"
        if outer.data != "sub_block" else "blocks are defined at top level"))
    return True


# --- confusable characters ---------------------------------------------------------------------

# Characters that look like (or stand where one meant) a character of the language:
# character -> (what was meant, a one-character stand-in used to go on parsing).
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_LOOKALIKE = {
    **{c: (" ", " ") for c in _SPACES},
    **{c: ("", " ") for c in _INVISIBLE},
    "\u201c": ('"', '"'), "\u201d": ('"', '"'), "\u201e": ('"', '"'), "\u00ab": ('"', '"'),
    "\u00bb": ('"', '"'), "\u2018": ('"', '"'), "\u2019": ('"', '"'),
    "\u2010": ("-", "-"), "\u2011": ("-", "-"), "\u2012": ("-", "-"), "\u2013": ("-", "-"),
    "\u2014": ("-", "-"), "\u2212": ("-", "-"), "\u00d7": ("*", "*"), "\u2215": ("/", "/"),
    "\u2264": ("<=", "<"), "\u2265": (">=", ">"), "\u2260": ("!=", "="),
    # Cyrillic and Greek letters that look like Latin ones
    **{c: (l, l) for c, l in zip("\u0430\u0435\u043e\u0440\u0441\u0443\u0445\u0456\u0458\u0455\u0501\u04bb\u051b\u051d",
                                 "aeopcyxijsdhqw")},
    **{c: (l, l) for c, l in zip("\u0410\u0412\u0415\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u0406\u0408\u0405",
                                 "ABEKMHOPCTXIJS")},
    **{c: (l, l) for c, l in zip("\u03bf\u03bd\u0391\u0392\u0395\u0396\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a7\u03a5",
                                 "ovABEZHIKMNOPTXY")},
    # full-width forms of ASCII
    **{chr(c): (chr(c - 0xFEE0), chr(c - 0xFEE0)) for c in range(0xFF01, 0xFF5F)},
}
_CONTROL = "".join(chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), 127])
_LOOKALIKE.update({c: ("", " ") for c in _CONTROL})
_CONFUSABLE_SCAN = re.compile(
    r'"(?:[^"\\\n' + re.escape(_CONTROL) + r']|\\[^' + re.escape(_CONTROL) + r'])*"?|#[^\n]*|(['
    + re.escape("".join(_LOOKALIKE)) + "])")


def _confusables(source: Source, text: str) -> tuple[str, list[Diagnostic]]:
    """Report characters that look like the language's own (outside strings and comments),
    one diagnostic per character, and stand the intended character in for the parse."""
    found: dict[str, list[int]] = {}  # what was meant -> where (one diagnostic each)
    for m in _CONFUSABLE_SCAN.finditer(text):
        if m.group(1) is not None:
            ch = m.group(1)
            meant = ("\0" if ch in _INVISIBLE else "\1" if ch in _CONTROL else " " if ch in _SPACES
                     else _LOOKALIKE[ch][0])
            found.setdefault(meant, []).append(m.start(1))
    if not found:
        return text, []
    chars = list(text)
    for offsets in found.values():
        for o in offsets:
            ch = text[o]
            stand_in = _LOOKALIKE[ch][1]
            if ch in _INVISIBLE and 0 < o < len(chars) - 1 and _is_word(chars[o - 1]) \
                    and _is_word(chars[o + 1]):
                stand_in = "_"  # inside a name: keep it one name
            chars[o] = stand_in
    fixed = "".join(chars)
    diagnostics = []
    for offsets in found.values():
        at = offsets[0]
        ch = text[at]
        meant = _LOOKALIKE[ch][0]
        span = source.span(at, at + 1)
        word = _word_at(fixed, at) if meant.strip() else ""
        if ch in _SPACES:
            d = error("confusable", f"{char_name(ch)} where a space belongs", span,
                      "not a plain space", help="replace it with a plain space (no-break spaces "
                      "come with text pasted from web pages and documents)")
        elif ch in _CONTROL:
            d = error("confusable", f"control character {char_name(ch)}", span,
                      "a control character is here", help="delete it")
        elif ch in _INVISIBLE:
            d = error("confusable", f"invisible character {char_name(ch)}", span,
                      "an invisible character is here", help="delete it")
        else:
            d = error("confusable", f"`{ch}` is {char_name(ch)}, not `{meant}`", span,
                      f"looks like `{meant}`",
                      help=f"write `{meant}`" + (f": `{word}`" if word and word != meant else ""))
        if len(offsets) > 1:
            lines = sorted({source.line_col(o)[0] for o in offsets[1:]})
            shown = ", ".join(str(n) for n in lines[:8]) + (", ..." if len(lines) > 8 else "")
            d = Diagnostic(d.severity, d.code, d.message, d.span, d.label, d.labels, d.help,
                           (f"{len(offsets) - 1} more like it: line{'s' if len(lines) > 1 else ''} "
                            f"{shown}",))
        diagnostics.append(d)
    return fixed, diagnostics


def _is_word(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _word_at(text: str, offset: int) -> str:
    start = offset
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_") and text[start - 1].isascii():
        start -= 1
    end = offset + 1
    while end < len(text) and (text[end].isalnum() or text[end] == "_") and text[end].isascii():
        end += 1
    word = text[start:end]
    return word if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", word) else ""


# --- recovery ----------------------------------------------------------------------------------

_ITEM_START = re.compile(r"^[A-Za-z_]", re.M)


def _error_offset(exc: UnexpectedInput, text: str) -> int:
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        return exc.token.start_pos or 0
    if isinstance(exc, UnexpectedCharacters):
        return exc.pos_in_stream or 0
    return len(text)


def _skip_item(text: str, offset: int, opening: _Opening | None) -> str:
    """Blank the top-level item around `offset` (newlines kept, so positions stay put).

    When a block was left open and a new item starts in column 1, only the open block is
    dropped, so the new item is still parsed.
    """
    anchor = opening.offset if opening is not None else offset
    start = 0
    for m in _ITEM_START.finditer(text, 0, anchor + 1):
        start = m.start()
    if opening is not None and opening.new_item:
        end = _line_start(text, offset)
    else:
        nxt = _ITEM_START.search(text, offset + 1)
        end = nxt.start() if nxt else len(text)
    if start >= end:
        return text
    blank = re.sub(r"[^\n]", " ", text[start:end])
    return text[:start] + blank + text[end:]


def _repair(text: str, offset: int) -> str | None:
    """Mend the text at an unexpected character so that the rest still parses, keeping every
    position: an unterminated string is closed before the brackets that end its line, and a
    single-quoted string gets double quotes. None when there is no such mend."""
    ch = text[offset:offset + 1]
    end = text.find("\n", offset)
    end = len(text) if end < 0 else end
    if ch == '"':
        line = text[offset:end].rstrip(" \t\r")
        closers = len(line) - len(line.rstrip(")]},"))
        body = len(line) - closers
        if body >= 2:
            return text[:offset] + '"' + "x" * (body - 2) + '"' + text[offset + body:]
        return None
    if ch == "'":
        m = re.compile(r"'[^'\n]*'").match(text, offset)
        if m:
            return text[:offset] + '"' + "x" * (len(m.group()) - 2) + '"' + text[m.end():]
    return None


# --- friendly syntax errors --------------------------------------------------------------------

_TERMINAL_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "$END": "end of file", "LBRACE": "`{`", "RBRACE": "`}`", "LPAR": "`(`", "RPAR": "`)`",
    "LSQB": "`[`", "RSQB": "`]`", "EQUAL": "`=`", "COMMA": "`,`", "COLON": "`:`", "DOT": "`.`",
    "PERCENT": "`%`", "CMP_OP": "a comparison", "ADD_OP": "`+` or `-`", "MUL_OP": "`*` or `/`",
    "MINUS": "`-`",
}


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "_NL":
        return "end of line"
    return f"`{tok.value}`"


class _Opening:
    """An open `{`, `(` or `[` at the point of a syntax error."""

    def __init__(self, char: str, offset: int, new_item: bool):
        self.char, self.offset, self.new_item = char, offset, new_item


_BRACKETS = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[{}()\[\]]')
_CLOSER = {"{": "}", "(": ")", "[": "]"}
_OPENER = {v: k for k, v in _CLOSER.items()}


def _open_brackets(text: str, offset: int) -> list[tuple[str, int]]:
    """The brackets still open at `offset`, outermost first (strings and comments skipped)."""
    stack: list[tuple[str, int]] = []
    for m in _BRACKETS.finditer(text, 0, offset):
        tok = m.group(0)
        if tok in _CLOSER:
            stack.append((tok, m.start()))
        elif tok in _OPENER and stack and stack[-1][0] == _OPENER[tok]:
            stack.pop()
    return stack


def _closed_later(text: str, offset: int, char: str) -> bool:
    """Whether the bracket `char` open at `offset` is closed further on, before a new item."""
    depth = 0
    for m in _BRACKETS.finditer(text, offset):
        tok = m.group(0)
        if tok in _CLOSER:
            depth += 1
        elif tok in _OPENER:
            if depth == 0:
                return tok == _CLOSER[char]
            depth -= 1
        elif tok[0] != "#" and tok[0] != '"':
            continue
        line_start = _line_start(text, m.start())
        if line_start > offset and _ITEM_START.match(text, line_start) and depth == 0:
            return False
    return False


def _newline_before(text: str, offset: int) -> bool:
    """Whether a line break separates `offset` from the token before it."""
    i = offset - 1
    while i >= 0 and text[i] in " \t\r\f":
        i -= 1
    return i >= 0 and text[i] == "\n"


def _opening(text: str, offset: int) -> _Opening | None:
    """The bracket still open at `offset` that explains the error, if any.

    An open `(` or `[` wins over a `{`: it is reported when the file ends, when a closer of
    another kind comes, or when the error is on a later line and nothing closes it further on.
    A `{` is reported when the file ends, or when a new item starts in column 1 on a line
    after the one that opened it.
    """
    stack = _open_brackets(text, offset)
    if not stack:
        return None
    at_end = offset >= len(text.rstrip())
    line_start = _line_start(text, offset)
    new_item = bool(_ITEM_START.match(text, line_start)) and text[line_start] != "}"
    here = text[offset:offset + 1]
    char, pos = stack[-1]
    if char in "([":
        mismatched = here in _OPENER and here != _CLOSER[char]
        if at_end or mismatched or (_newline_before(text, offset) and not _closed_later(text, offset, char)):
            return _Opening(char, pos, new_item and _newline_before(text, offset))
        return None
    braces = [p for c, p in stack if c == "{"]
    if at_end:
        return _Opening("{", braces[0], False)
    if new_item and _line_start(text, pos) < line_start:
        return _Opening("{", braces[-1] if len(braces) == 1 else braces[0], True)
    return None


def _syntax_diagnostic(source: Source, text: str, exc: UnexpectedInput) -> Diagnostic:
    offset = _error_offset(exc, text)
    at_end = offset >= len(text.rstrip())
    if isinstance(exc, UnexpectedCharacters):
        return _unexpected_character(source, text, offset, exc)

    expected = set(getattr(exc, "expected", None) or getattr(exc, "accepts", None) or ())
    tok = exc.token if isinstance(exc, UnexpectedToken) else None
    opening = _opening(text, offset)
    if opening is not None:
        closer = _CLOSER[opening.char]
        what = "block" if opening.char == "{" else f"`{opening.char}`"
        opener = (source.span(_line_start(text, opening.offset), opening.offset + 1)
                  if opening.char == "{" else source.span(opening.offset, opening.offset + 1))
        if at_end:
            return error("syntax", f"{what} is never closed", opener,
                         f"this `{opening.char}` has no matching `{closer}`",
                         help=f"add `{closer}` before the end of the file")
        line_start = _line_start(text, offset)
        here = source.span(line_start if opening.new_item else offset,
                           offset + (len(tok.value) if tok is not None and tok.value else 1))
        if opening.char == "{":
            label, help_ = "a new item starts here", f"add `}}` to close it before this line"
        elif opening.new_item:
            label, help_ = "a new item starts here", f"add `{closer}` to close it before this line"
        else:
            label = f"expected `{closer}` first" if text[offset:offset + 1] in _OPENER else \
                f"expected `{closer}` before this"
            before = _prev_token_end(text, offset)
            help_ = (f"add `{closer}` at the end of line {source.line_col(before)[0]}"
                     if _newline_before(text, offset) else f"add `{closer}` before this")
        return error("syntax", f"{what} is never closed", here, label,
                     labels=[Label(opener, "opened here")], help=help_)
    if tok is not None and tok.type in ("COLON", "SEMICOLON"):
        return _habit(source, offset, tok.value)
    if tok is not None and tok.type in ("RBRACE", "RPAR", "RSQB"):
        stack = _open_brackets(text, offset)
        if not any(c == _OPENER[tok.value] for c, _ in stack):
            what = {"}": "block", ")": "`(`", "]": "`[`"}[tok.value]
            return error("syntax", f"unmatched `{tok.value}`", _tok_span(source, tok),
                         f"no {what} is open here",
                         help=f"remove it" + (": the block above is closed already (each `{` "
                                              "has one `}`)" if tok.value == "}" else ""))
    if tok is not None and tok.type in ("_NL", "$END") and expected == {"LBRACE"}:
        line = source.line_text(source.line_col(offset)[0]).strip()
        return error("syntax", f"expected `{{` after `{line}`", source.span(offset, offset),
                     "the block's body starts here with `{`",
                     help=f"write `{line} {{` and close the block with `}}` on a line of its own")
    if (tok is not None and tok.type in ("MUL_OP", "ADD_OP") and "NUMBER" in expected
            and text[offset - 1:offset] == tok.value):
        return error("syntax", f"`{tok.value * 2}` is not an operator", source.span(offset - 1, offset + 1),
                     "not an operator", help="the operators are `+`, `-`, `*` and `/`")
    if tok is not None and tok.type == "_NL" and "NAME" in expected and "NUMBER" in expected:
        return error("syntax", "missing value", source.span(offset, offset),
                     "expected a value here", help="write the value after `=`, e.g. `epochs = 2`")
    if tok is not None and tok.type == "EQUAL" and "CMP_OP" in expected:
        return error("syntax", "unexpected `=` in an expression", _tok_span(source, tok),
                     "assignment is not an expression", help="to compare values, write `==`")
    stack = _open_brackets(text, offset)
    if (tok is not None and "COMMA" in expected and stack and stack[-1][0] in "(["
            and _newline_before(text, offset)):
        what = "arguments" if stack[-1][0] == "(" else "list items"
        return error("syntax", f"missing `,` between {what}", _tok_span(source, tok),
                     "expected `,` before this", help=f"end the line before with `,`")
    if tok is not None and "NUMBER" in expected and tok.type not in ("_NL", "$END"):
        return error("syntax", f"expected a value, found {_describe_token(tok)}",
                     _tok_span(source, tok), "a value goes here",
                     help="a value is a number, a string, a name, a list `[...]` or a call `f(...)`")
    if tok is not None and ("_NL" in expected or "RBRACE" in expected) and tok.type not in ("_NL", "$END"):
        in_block = bool(stack) and stack[-1][0] == "{"
        starts_member = tok.type in ("NAME", "VAR", "CHECK", "USE", "EXTENDS") and (
            tok.type != "NAME" or re.match(r"[ \t]*(=|\{|\.|[A-Za-z_])", text[tok.end_pos:]))
        if starts_member and (not stack or in_block):
            what = "fields" if in_block else "items"
            return error("syntax", f"two {what} on one line", _tok_span(source, tok),
                         f"a second {what[:-1]} starts here",
                         help=f"start a new line before `{tok.value}`: one {what[:-1]} per line"
                              + ("; a block on one line holds one field" if in_block else ""))
        return error("syntax", f"unexpected {_describe_token(tok)} after a complete value",
                     _tok_span(source, tok), "expected the end of the line here",
                     help="one field per line; join values with an operator, or use a list `[a, b]`")
    what = _describe_token(tok) if tok is not None else "end of file"
    span = _tok_span(source, tok) if tok is not None else source.span(offset, offset)
    return error("syntax", f"unexpected {what}", span, "not expected here",
                 help=_expected_help(expected))


def _prev_token_end(text: str, offset: int) -> int:
    """The offset just past the last token before `offset` (comments and blanks skipped)."""
    i = offset
    while i > 0:
        line_start = _line_start(text, i - 1)
        code = _strip_comment(text[line_start:i])
        if code.strip():
            return line_start + len(code.rstrip()) - 1
        i = line_start
    return 0


def _strip_comment(line: str) -> str:
    for m in _BRACKETS.finditer(line):
        if m.group(0).startswith("#"):
            return line[:m.start()]
    return line


def _unexpected_character(source: Source, text: str, offset: int, exc) -> Diagnostic:
    ch = text[offset]
    if ch == '"':
        end = text.find("\n", offset)
        span = source.span(offset, end if end >= 0 else len(text))
        return error("syntax", "unterminated string", span, "this string never ends",
                     help='close the string with `"` on the same line')
    if ch == "'":
        return error("syntax", "strings use double quotes", source.span(offset, offset + 1),
                     "a single quote", help='write `"text"`')
    if ch == ":" or ch == ";":
        return _habit(source, offset, ch)
    for habit, word in (("&&", "and"), ("||", "or"), ("!", "not")):
        if text.startswith(habit, offset):
            return error("syntax", f"`{habit}` is not an operator here",
                         source.span(offset, offset + len(habit)), f"write `{word}`",
                         help="conditions use `and`, `or` and `not`")
    shown = f"`{ch}`" if ch.isprintable() and ch.isascii() else \
        (f"`{ch}` ({char_name(ch)})" if ch.isprintable() and not ch.isspace() else char_name(ch))
    help_ = _expected_help(exc.allowed or set())
    if not ch.isascii() and ch.isalpha():
        help_ = "names are ASCII letters, digits and `_`; other text goes in a string `\"...\"`"
    return error("syntax", f"unexpected character {shown}", source.span(offset, offset + 1),
                 "not part of the formula language", help=help_)


def _habit(source: Source, offset: int, ch: str) -> Diagnostic:
    if ch == ":":
        return error("syntax", "fields are set with `=`, not `:`", source.span(offset, offset + 1),
                     "YAML-style `:`", help="write `name = value`; `:` only follows a var's name "
                     "before its type (`var rank: int = 16`)")
    return error("syntax", "unexpected `;`", source.span(offset, offset + 1),
                 "formulas end fields with a newline", help="remove the `;`")


def _tok_span(source: Source, tok: Token) -> Span:
    start = tok.start_pos or 0
    end = tok.end_pos if tok.end_pos is not None else start
    if tok.type == "_NL":
        end = start
    return source.span(start, end)


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def _expected_help(expected: set[str]) -> str:
    names = sorted({_TERMINAL_NAMES.get(e, f"`{e.lower()}`" if e.isupper() else f"`{e}`")
                    for e in expected if e not in ("WS", "COMMENT")})
    if not names:
        return ""
    if len(names) > 6:
        return "expected " + ", ".join(names[:6]) + " or another item"
    return "expected " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1])


# --- tree → AST ---------------------------------------------------------------------------------


def _number(text: str) -> int | float:
    clean = text.replace("_", "")
    if re.fullmatch(r"[0-9]+", clean):
        return int(clean)
    return float(clean)


def _unescape(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


@v_args(meta=True, inline=True)
class _ToAst(Transformer_NonRecursive):
    def __init__(self, source: Source):
        super().__init__()
        self.src = source

    def _span(self, meta) -> Span:
        return self.src.span(meta.start_pos, meta.end_pos)

    def _tspan(self, tok: Token) -> Span:
        return self.src.span(tok.start_pos or 0, tok.end_pos or 0)

    def _ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), self._tspan(tok))

    # items
    def start(self, meta, *items):
        return _Items(list(items))

    def block(self, meta, kind, name, *body):
        return ast.Block(self._ident(kind), self._ident(name), tuple(body), self._span(meta))

    def field(self, meta, name, value):
        return ast.Field(self._ident(name), value, self._span(meta))

    def check(self, meta, expr):
        return ast.Check(expr, self._span(meta))

    def sub_block(self, meta, name, *body):
        return ast.SubBlock(self._ident(name), tuple(body), self._span(meta))

    def var_decl(self, meta, _var, name, type_, value, doc, *constraints):
        default, required = None, False
        if value is not None:
            kind, expr = value
            default, required = (expr, False) if kind == "default" else (None, True)
        enum = pattern = None
        for kind, c in constraints:
            if kind == "enum":
                enum = c
            else:
                pattern = c
        doc_node = ast.String(_unescape(doc), str(doc), self._tspan(doc)) if doc is not None else None
        return ast.VarDecl(self._ident(name), self._ident(type_), default, required, doc_node,
                           enum, pattern, self._span(meta))

    def var_default(self, meta, expr):
        return ("default", expr)

    def var_required(self, meta):
        return ("required", None)

    def enum_constraint(self, meta, lst):
        return ("enum", lst)

    def pattern_constraint(self, meta, s):
        return ("pattern", ast.String(_unescape(s), str(s), self._tspan(s)))

    def use(self, meta, path, alias, args):
        return ast.Use(ast.String(_unescape(path), str(path), self._tspan(path)), self._ident(alias),
                       tuple(args or ()), self._span(meta))

    def use_args(self, meta, *body):
        return list(body)

    def extends(self, meta, path):
        return ast.Extends(ast.String(_unescape(path), str(path), self._tspan(path)), self._span(meta))

    def override(self, meta, dotted, value):
        return ast.Override(dotted, value, self._span(meta))

    def dotted(self, meta, *parts):
        return tuple(self._ident(p) for p in parts)

    # expressions
    def where(self, meta, base, cond):
        return ast.Where(base, cond, self._span(meta))

    def or_(self, meta, left, right):
        return ast.BoolOp("or", left, right, self._span(meta))

    def and_(self, meta, left, right):
        return ast.BoolOp("and", left, right, self._span(meta))

    def not_(self, meta, operand):
        return ast.Not(operand, self._span(meta))

    def compare(self, meta, left, op, right):
        return ast.Compare(str(op), left, right, self._span(meta))

    def contains(self, meta, left, right):
        return ast.Compare("in", left, right, self._span(meta))

    def binop(self, meta, left, op, right):
        return ast.BinOp(str(op), left, right, self._span(meta))

    def neg(self, meta, operand):
        return ast.Neg(operand, self._span(meta))

    def attr(self, meta, obj, name):
        return ast.Attr(obj, self._ident(name), self._span(meta))

    def call(self, meta, func, *args):
        pos = tuple(a for a in args if a is not None and not isinstance(a, ast.KwArg))
        kw = tuple(a for a in args if isinstance(a, ast.KwArg))
        return ast.Call(func, pos, kw, self._span(meta))

    def pos_arg(self, meta, expr):
        return expr

    def kw_arg(self, meta, name, expr):
        return ast.KwArg(self._ident(name), expr, self._span(meta))

    def number(self, meta, tok):
        return ast.Number(_number(tok), str(tok), self._span(meta))

    def percent(self, meta, tok):
        return ast.Percent(_number(tok), str(tok), self._span(meta))

    def size(self, meta, tok, unit):
        return ast.Size(_number(tok), str(tok), self._ident(unit), self._span(meta))

    def string(self, meta, tok):
        return ast.String(_unescape(tok), str(tok), self._span(meta))

    def true(self, meta):
        return ast.Bool(True, self._span(meta))

    def false(self, meta):
        return ast.Bool(False, self._span(meta))

    def name(self, meta, tok):
        return ast.Name(str(tok), self._span(meta))

    def list(self, meta, *items):
        return ast.ListExpr(tuple(i for i in items if i is not None), self._span(meta))


class _Items:
    def __init__(self, children):
        self.children = children

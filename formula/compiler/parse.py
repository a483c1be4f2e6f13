"""Text → AST. The only module that sees Lark.

Syntax errors become diagnostics; after each one the parser skips to the next top-level item
(a line that starts in column 1) and goes on, so one run reports several mistakes.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lark import PostLex

from . import ast
from .diagnostics import Diagnostic, Label, error
from .source import Source, Span

GRAMMAR = Path(__file__).with_name("grammar.lark")
MAX_SYNTAX_ERRORS = 20


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
    diagnostics: list[Diagnostic] = []
    text = source.text
    comments: list[Token] = []
    while True:
        comments.clear()
        try:
            tree = _parse_collecting(text, comments)
            break
        except UnexpectedInput as exc:
            diagnostics.append(_syntax_diagnostic(source, text, exc))
            blanked = _skip_item(text, _error_offset(exc, text), _opening(text, _error_offset(exc, text)))
            if blanked == text or len(diagnostics) >= MAX_SYNTAX_ERRORS:
                tree = None
                break
            text = blanked
    items = _ToAst(source).transform(tree).children if tree is not None else []
    module = ast.Module(
        source=source,
        items=tuple(items),
        comments=tuple(ast.Comment(c.value, source.span(c.start_pos, c.end_pos))
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
    return _ToAst(source).transform(tree), []


# --- recovery ----------------------------------------------------------------------------------

_ITEM_START = re.compile(r"^[A-Za-z_]", re.M)


def _error_offset(exc: UnexpectedInput, text: str) -> int:
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        return exc.token.start_pos or 0
    if isinstance(exc, UnexpectedCharacters):
        return exc.pos_in_stream
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


def _opening(text: str, offset: int) -> _Opening | None:
    """The bracket still open at `offset` that explains the error, if any.

    An open `(` or `[` wins over a `{`, since newlines inside them are not item ends; a `{` is
    reported when the error is at the end of the file or on a new item in column 1.
    """
    stack: list[tuple[str, int]] = []
    pairs = {"}": "{", ")": "(", "]": "["}
    for m in re.finditer(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[{}()\[\]]', text[:offset]):
        tok = m.group(0)
        if tok in "{([":
            stack.append((tok, m.start()))
        elif tok in pairs and stack and stack[-1][0] == pairs[tok]:
            stack.pop()
    if not stack:
        return None
    at_end = offset >= len(text.rstrip())
    line_start = _line_start(text, offset)
    new_item = bool(_ITEM_START.match(text, line_start)) and text[line_start] != "}"
    for char, pos in reversed(stack):
        if char in "([" and (at_end or text[offset:offset + 1] in "}" or new_item):
            return _Opening(char, pos, new_item)
    braces = [pos for char, pos in stack if char == "{"]
    if braces and (at_end or new_item):
        return _Opening("{", braces[0], new_item)
    return None


def _syntax_diagnostic(source: Source, text: str, exc: UnexpectedInput) -> Diagnostic:
    offset = _error_offset(exc, text)
    at_end = offset >= len(text.rstrip())
    if isinstance(exc, UnexpectedCharacters):
        ch = text[offset]
        if ch == '"':
            end = text.find("\n", offset)
            span = source.span(offset, end if end >= 0 else len(text))
            return error("syntax", "unterminated string", span, "this string never ends",
                         help='close the string with `"` on the same line')
        if ch == ":" or ch == ";":
            return _habit(source, offset, ch)
        for habit, word in (("&&", "and"), ("||", "or"), ("!", "not")):
            if text.startswith(habit, offset):
                return error("syntax", f"`{habit}` is not an operator here",
                             source.span(offset, offset + len(habit)), f"write `{word}`",
                             help=f"conditions use `and`, `or` and `not`")
        return error("syntax", f"unexpected character `{ch}`", source.span(offset, offset + 1),
                     "not part of the formula language",
                     help=_expected_help(exc.allowed or set()))

    expected = set(getattr(exc, "expected", None) or getattr(exc, "accepts", None) or ())
    tok = exc.token if isinstance(exc, UnexpectedToken) else None
    opening = _opening(text, offset)
    if opening is not None:
        closer = {"{": "}", "(": ")", "[": "]"}[opening.char]
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
        return error("syntax", f"{what} is never closed", here,
                     "a new item starts here" if opening.new_item else f"expected `{closer}` first",
                     labels=[Label(opener, "opened here")],
                     help=f"add `{closer}` to close it before this line")
    if tok is not None and tok.type in ("COLON", "SEMICOLON"):
        return _habit(source, offset, tok.value)
    if tok is not None and tok.type == "_NL" and "NAME" in expected and "NUMBER" in expected:
        return error("syntax", "missing value", source.span(offset, offset),
                     "expected a value here", help="write the value after `=`, e.g. `epochs = 2`")
    if tok is not None and tok.type == "EQUAL" and "CMP_OP" in expected:
        return error("syntax", "unexpected `=` in an expression", _tok_span(source, tok),
                     "assignment is not an expression", help="to compare values, write `==`")
    if tok is not None and "NUMBER" in expected and tok.type not in ("_NL", "$END"):
        return error("syntax", f"expected a value, found {_describe_token(tok)}",
                     _tok_span(source, tok), "a value goes here",
                     help="a value is a number, a string, a name, a list `[...]` or a call `f(...)`")
    if tok is not None and "_NL" in expected and tok.type not in ("_NL", "$END"):
        return error("syntax", f"unexpected {_describe_token(tok)} after a complete value",
                     _tok_span(source, tok), "expected the end of the line here",
                     help="one field per line; join values with an operator, or use a list `[a, b]`")
    what = _describe_token(tok) if tok is not None else "end of file"
    span = _tok_span(source, tok) if tok is not None else source.span(offset, offset)
    return error("syntax", f"unexpected {what}", span, "not expected here",
                 help=_expected_help(expected))


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
class _ToAst(Transformer):
    def __init__(self, source: Source):
        super().__init__()
        self.src = source

    def _span(self, meta) -> Span:
        return self.src.span(meta.start_pos, meta.end_pos)

    def _tspan(self, tok: Token) -> Span:
        return self.src.span(tok.start_pos, tok.end_pos)

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

"""`formula lsp`: a Language Server Protocol server on stdio, built on pygls.

Imported only by the `lsp` command (pygls is the optional extra `formula[lsp]`). Everything it
knows comes from the compiler: diagnostics are `compile_formula` run on the editor's unsaved
texts (an overlay over the files on disk, so an open library is seen by its importers), hover
and completion read the block schemas, go to definition uses the resolver's spans, and
formatting is `formula fmt`.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlparse
from urllib.request import pathname2url

from lsprotocol import types as lsp  # type: ignore[import-not-found, unused-ignore]
from pygls.lsp.server import LanguageServer  # type: ignore[import-not-found, unused-ignore]

from formula.compiler import ast
from formula.compiler.diagnostics import Diagnostic
from formula.compiler.format import format_bytes
from formula.compiler.pipeline import compile_formula
from formula.compiler.resolve import Program, read_file, resolve
from formula.compiler.schema import SCHEMAS
from formula.compiler.source import Span

KEYWORDS = ("var", "use", "extends")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


def uri_to_path(uri: str) -> str:
    parsed = urlparse(uri)
    return os.path.normpath(unquote(parsed.path)) if parsed.scheme == "file" else uri


def path_to_uri(path: str) -> str:
    return "file://" + pathname2url(os.path.abspath(path))


# --- positions ---------------------------------------------------------------------------------


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def span_range(span: Span | None) -> lsp.Range:
    if span is None:
        return lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0))
    src = span.source
    line, col = src.line_col(span.start)
    end_line, end_col = src.line_col(span.end)
    start = lsp.Position(line - 1, _utf16(src.line_text(line)[: col - 1]))
    end = lsp.Position(end_line - 1, _utf16(src.line_text(end_line)[: end_col - 1])
                       if end_line <= src.line_count else 0)
    return lsp.Range(start, end)


def offset_at(text: str, pos: lsp.Position) -> int:
    """The character offset of an LSP position in `text`."""
    lines = text.split("\n")
    line = min(pos.line, len(lines) - 1)
    base = sum(len(x) + 1 for x in lines[:line])
    units, i, s = 0, 0, lines[line]
    while i < len(s) and units < pos.character:
        units += 2 if ord(s[i]) > 0xFFFF else 1
        i += 1
    return base + i


def to_lsp(d: Diagnostic, path: str) -> lsp.Diagnostic:
    here = d.span is not None and os.path.normpath(d.span.source.path) == path
    message = d.message + (f"\nhelp: {d.help}" if d.help else "")
    message += "".join(f"\nnote: {n}" for n in d.notes)
    if d.span is not None and not here:
        message = f"{d.span.source.path}:{d.span.line}:{d.span.column}: {message}"
    related = [lsp.DiagnosticRelatedInformation(
        lsp.Location(path_to_uri(lab.span.source.path), span_range(lab.span)), lab.message)
        for lab in d.labels]
    return lsp.Diagnostic(
        range=span_range(d.span if here else None), message=message, source="formula",
        code=d.code, related_information=related or None,
        severity=lsp.DiagnosticSeverity.Error if d.is_error else lsp.DiagnosticSeverity.Warning)


# --- where the cursor is -------------------------------------------------------------------------


def enclosing_blocks(text: str, offset: int) -> list[tuple[str, str]]:
    """The `(kind, name)` of each block open at `offset`, outermost first, read from the text
    itself so that it works while the file does not parse (the usual state while typing)."""
    stack: list[tuple[str, str]] = []
    i, n = 0, min(offset, len(text))
    line_start = 0
    while i < n:
        c = text[i]
        if c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] not in '"\n':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c == "\n":
            line_start = i + 1
        elif c == "{":
            head = text[line_start:i].split()
            stack.append((head[0], head[1]) if len(head) >= 2 else ((head[0], "") if head else ("", "")))
        elif c in "([":
            stack.append((c, ""))  # inside a call's arguments or a list: not a field's place
        elif c in "})]" and stack:
            stack.pop()
        i += 1
    return stack


def _word_at(text: str, offset: int) -> tuple[str, int, int]:
    lo = offset
    while lo > 0 and (text[lo - 1].isalnum() or text[lo - 1] in "_."):
        lo -= 1
    hi = offset
    while hi < len(text) and (text[hi].isalnum() or text[hi] in "_."):
        hi += 1
    return text[lo:hi], lo, hi


def _field_doc(kind: str, name: str) -> str | None:
    schema = SCHEMAS.get(kind)
    spec = schema.field(name) if schema else None
    if spec is None:
        return None
    out = f"**{kind}.{name}**: {spec.type.describe}"
    if spec.required:
        out += " (required)"
    elif spec.default not in (None, ()):
        out += f", default `{spec.default}`"
    if spec.methods:
        out += f"; for {', '.join(spec.methods)} only"
    return out + (f"\n\n{spec.doc}" if spec.doc else "")


# --- the server -----------------------------------------------------------------------------------


class FormulaServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("formula-lsp", "0.1.0")
        self.programs: dict[str, tuple[int | None, Program | None]] = {}

    def read(self, path: str) -> bytes | str | None:
        """Open documents as the editor has them, other files from disk."""
        uri = path_to_uri(path)
        doc = self.workspace.text_documents.get(uri)
        return doc.source if doc is not None else read_file(path)

    def text(self, uri: str) -> str:
        return self.workspace.get_text_document(uri).source

    def diagnose(self, uri: str) -> list[lsp.Diagnostic]:
        path = uri_to_path(uri)
        compiled = compile_formula(path, (), self.read)
        return [to_lsp(d, path) for d in compiled.diagnostics]

    def program(self, uri: str) -> Program | None:
        doc = self.workspace.get_text_document(uri)
        cached = self.programs.get(uri)
        if cached is not None and cached[0] == doc.version:
            return cached[1]
        try:
            program, _ = resolve(uri_to_path(uri), (), self.read)
        except Exception:  # noqa: BLE001 - a request answers nothing rather than fail
            program = None
        self.programs[uri] = (doc.version, program)
        return program


server = FormulaServer()


def publish(ls: FormulaServer, uri: str) -> None:
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=ls.diagnose(uri)))


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: FormulaServer, params: lsp.DidOpenTextDocumentParams) -> None:
    publish(ls, params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: FormulaServer, params: lsp.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    publish(ls, uri)
    # Open formulas that name the changed one (`extends`/`use` it) see the unsaved text too.
    name = os.path.basename(uri_to_path(uri))
    for other, doc in list(ls.workspace.text_documents.items()):
        if other != uri and name in doc.source:
            publish(ls, other)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: FormulaServer, params: lsp.DidSaveTextDocumentParams) -> None:
    publish(ls, params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: FormulaServer, params: lsp.DidCloseTextDocumentParams) -> None:
    ls.programs.pop(params.text_document.uri, None)
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: FormulaServer, params: lsp.HoverParams) -> lsp.Hover | None:
    text = ls.text(params.text_document.uri)
    offset = offset_at(text, params.position)
    word, lo, hi = _word_at(text, offset)
    if not word:
        return None
    line_start = text.rfind("\n", 0, lo) + 1
    before = text[line_start:lo]
    doc = None
    blocks = enclosing_blocks(text, lo)
    if not before.strip() and blocks and "." not in word:  # a field at the start of its line
        doc = _field_doc(blocks[0][0], word)
    elif not before.strip() and not blocks:
        parts = word.split(".")
        if word in SCHEMAS:
            doc = f"**{word}**: {SCHEMAS[word].doc}"
        elif len(parts) == 3 and parts[0] in SCHEMAS:  # `stage.sft.lr = ...`
            cursor = offset - lo
            doc = (_field_doc(parts[0], parts[2]) if cursor > len(parts[0]) + len(parts[1]) + 1
                   else f"**{parts[0]}**: {SCHEMAS[parts[0]].doc}")
    if doc is None and (program := ls.program(params.text_document.uri)) is not None:
        parts = word.split(".")
        var = program.root.vars.get(parts[1] if parts[0] == "var" and len(parts) == 2 else word)
        if var is not None:
            decl = var.decl
            doc = f"**var {decl.name.name}**: {decl.type.name}" + (f"\n\n{decl.doc.value}" if decl.doc else "")
    if doc is None:
        return None
    rng = lsp.Range(lsp.Position(params.position.line, params.position.character - (offset - lo)),
                    lsp.Position(params.position.line, params.position.character + (hi - offset)))
    return lsp.Hover(lsp.MarkupContent(lsp.MarkupKind.Markdown, doc), rng)


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=["="]))
def completion(ls: FormulaServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    uri = params.text_document.uri
    text = ls.text(uri)
    offset = offset_at(text, params.position)
    _, lo, _ = _word_at(text, offset)
    line_start = text.rfind("\n", 0, lo) + 1
    before = text[line_start:lo]
    blocks = enclosing_blocks(text, lo)
    items: list[lsp.CompletionItem] = []
    if not before.strip():
        if blocks and blocks[0][0] in SCHEMAS and len(blocks) == 1:
            schema = SCHEMAS[blocks[0][0]]
            for f in schema.fields:
                items.append(lsp.CompletionItem(
                    f.name, kind=lsp.CompletionItemKind.Field, detail=f.type.describe,
                    documentation=lsp.MarkupContent(lsp.MarkupKind.Markdown, _field_doc(schema.kind, f.name) or ""),
                    insert_text=f"{f.name} = "))
            if schema.checks:
                items.append(lsp.CompletionItem("check", kind=lsp.CompletionItemKind.Keyword))
        elif not blocks:
            items += [lsp.CompletionItem(k, kind=lsp.CompletionItemKind.Class, detail=s.doc)
                      for k, s in SCHEMAS.items()]
            items += [lsp.CompletionItem(k, kind=lsp.CompletionItemKind.Keyword) for k in KEYWORDS]
        return lsp.CompletionList(is_incomplete=False, items=items)
    # A value: references to blocks (of the kinds the field takes, where it is known), vars,
    # and the field's symbols.
    field_name = before.split("=")[0].strip() if "=" in before else ""
    spec = SCHEMAS[blocks[0][0]].field(field_name) if blocks and blocks[0][0] in SCHEMAS else None
    kinds = getattr(spec.type, "kinds", None) if spec else None
    for choice in getattr(spec.type, "choices", ()) if spec else ():
        items.append(lsp.CompletionItem(choice, kind=lsp.CompletionItemKind.EnumMember))
    program = ls.program(uri)
    if program is not None:
        scopes = [(program.root, "")] + [(s, f"{a}.") for a, s in program.root.uses.items()]
        for scope, prefix in scopes:
            for name, b in scope.blocks.items():
                if kinds is None or b.kind.name in kinds:
                    items.append(lsp.CompletionItem(prefix + name, kind=lsp.CompletionItemKind.Reference,
                                                    detail=f"{b.kind.name} {b.qualified}"))
            if not prefix:
                items += [lsp.CompletionItem(v, kind=lsp.CompletionItemKind.Variable, detail="var")
                          for v in scope.vars]
    return lsp.CompletionList(is_incomplete=False, items=items)


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def definition(ls: FormulaServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    uri = params.text_document.uri
    text = ls.text(uri)
    offset = offset_at(text, params.position)
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line = text[line_start: line_end if line_end >= 0 else len(text)]
    m = re.match(r'\s*(extends|use)\s+"([^"]+)"', line)
    if m:  # the imported file itself
        target = os.path.normpath(os.path.join(os.path.dirname(uri_to_path(uri)), os.path.expanduser(m.group(2))))
        return lsp.Location(path_to_uri(target), lsp.Range(lsp.Position(0, 0), lsp.Position(0, 0)))
    word, lo, _ = _word_at(text, offset)
    program = ls.program(uri)
    if not word or program is None:
        return None
    parts = word.split(".")
    # The part under the cursor and the ones before it: `gt.sessions.holdout` on `sessions`.
    upto = text[lo:offset].count(".")
    parts = parts[: upto + 1]
    span = _lookup(program, parts)
    if span is None and len(parts) > 1:
        span = _lookup(program, parts[:-1]) if parts[0] != "var" else None
    if span is None:
        return None
    return lsp.Location(path_to_uri(span.source.path), span_range(span))


def _lookup(program: Program, parts: list[str]) -> Span | None:
    scope = program.root
    if parts[0] == "var" and len(parts) == 2:
        v = scope.vars.get(parts[1])
        return v.decl.name.span if v else None
    if parts[0] in SCHEMAS and len(parts) >= 2:  # `stage.sft.lr` in an override
        parts = parts[1:]
    while len(parts) > 1 and parts[0] in scope.uses:
        scope, parts = scope.uses[parts[0]], parts[1:]
    name = parts[0]
    if name in scope.blocks:
        block = scope.blocks[name]
        if len(parts) > 1:
            for member in block.members:
                if isinstance(member, ast.Field) and member.name.name == parts[1]:
                    return member.name.span
        return block.name.span
    if name in scope.vars and len(parts) == 1:
        return scope.vars[name].decl.name.span
    if name in scope.uses and len(parts) == 1:
        return scope.use_nodes[name].span if name in scope.use_nodes else None
    return None


@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
def formatting(ls: FormulaServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
    text = ls.text(params.text_document.uri)
    try:
        formatted, _ = format_bytes(uri_to_path(params.text_document.uri), text)
    except Exception:  # noqa: BLE001 - a file fmt cannot handle is left as it is
        return None
    if formatted is None or formatted == text:
        return []
    lines = text.split("\n")
    end = lsp.Position(len(lines) - 1, _utf16(lines[-1]))
    return [lsp.TextEdit(lsp.Range(lsp.Position(0, 0), end), formatted)]


def serve() -> None:
    server.start_io()

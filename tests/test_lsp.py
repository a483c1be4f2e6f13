"""`formula lsp`, driven over its protocol: JSON-RPC on the stdio of a `formula lsp` subprocess."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import pytest

from conftest import ROOT

pytest.importorskip("pygls")

EXAMPLE = ROOT / "examples" / "tiny.formula"


class Client:
    """A minimal LSP client: Content-Length framed JSON-RPC over a subprocess's pipes."""

    def __init__(self, cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "formula.cli", "lsp"], cwd=cwd,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.next_id = 0
        self.messages: Queue = Queue()
        self.pending: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            headers = {}
            while True:
                line = out.readline()
                if not line:
                    return
                line = line.decode().strip()
                if not line:
                    break
                k, _, v = line.partition(":")
                headers[k.lower()] = v.strip()
            self.messages.put(json.loads(out.read(int(headers["content-length"]))))

    def send(self, obj: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **obj}).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def notify(self, method: str, params: dict) -> None:
        self.send({"method": method, "params": params})

    def wait(self, pred, timeout: float = 30.0) -> dict:
        for i, m in enumerate(self.pending):
            if pred(m):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            try:
                m = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except Empty:
                raise AssertionError("no answer from the language server") from None
            if pred(m):
                return m
            self.pending.append(m)

    def request(self, method: str, params: dict) -> object:
        self.next_id += 1
        rid = self.next_id
        self.send({"id": rid, "method": method, "params": params})
        reply = self.wait(lambda m: m.get("id") == rid and "method" not in m)
        assert "error" not in reply, reply
        return reply["result"]

    def diagnostics(self, uri: str) -> list[dict]:
        m = self.wait(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                      and m["params"]["uri"] == uri)
        return m["params"]["diagnostics"]

    def close(self) -> None:
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def client():
    c = Client(ROOT)
    c.request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": {}})
    c.notify("initialized", {})
    yield c
    c.close()


_n = [0]


def scratch(name: str) -> Path:
    """A document the editor has open and never saved, next to the example (whose data it names)."""
    _n[0] += 1
    return EXAMPLE.parent / f"unsaved-{name}-{_n[0]}.formula"


def uri(path: Path) -> str:
    return path.resolve().as_uri()


def open_doc(client: Client, path: Path, text: str, version: int = 1) -> str:
    u = uri(path)
    client.notify("textDocument/didOpen", {"textDocument": {
        "uri": u, "languageId": "formula", "version": version, "text": text}})
    return u


def test_an_error_arrives_as_a_diagnostic_with_its_range(client):
    text = EXAMPLE.read_text().replace("  epochs  = 8\n", "  epoch   = 8\n")
    u = open_doc(client, scratch("tiny"), text)
    [d] = [d for d in client.diagnostics(u) if d["severity"] == 1]
    assert d["code"] == "unknown-field" and "did you mean `epochs`" in d["message"]
    line = text.split("\n").index("  epoch   = 8")
    assert d["range"] == {"start": {"line": line, "character": 2}, "end": {"line": line, "character": 7}}


def test_unsaved_changes_are_checked_and_fixing_them_clears_the_diagnostics(client):
    path = scratch("tiny")
    u = open_doc(client, path, EXAMPLE.read_text())
    assert [d for d in client.diagnostics(u) if d["severity"] == 1] == []
    client.notify("textDocument/didChange", {"textDocument": {"uri": u, "version": 2},
                                             "contentChanges": [{"text": "formula x {\n"}]})
    [d] = client.diagnostics(u)
    assert d["message"].startswith("block is never closed") and d["code"] == "syntax"
    assert d["range"] == {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 11}}


def test_hover_on_a_field_shows_its_documentation(client):
    text = EXAMPLE.read_text()
    u = open_doc(client, scratch("tiny"), text)
    client.diagnostics(u)
    lines = text.split("\n")
    line = lines.index("  quants = [f16, q8_0]")
    result = client.request("textDocument/hover", {"textDocument": {"uri": u},
                                                   "position": {"line": line, "character": 4}})
    assert "export.quants" in result["contents"]["value"]
    assert "files to write, one per type" in result["contents"]["value"]
    assert result["range"]["start"] == {"line": line, "character": 2}
    line = lines.index("  lr      = lr")
    result = client.request("textDocument/hover", {"textDocument": {"uri": u},
                                                   "position": {"line": line, "character": 13}})
    assert result["contents"]["value"] == "**var lr**: float\n\npeak learning rate of the LoRA SFT stage"
    line = next(i for i, x in enumerate(lines) if x.strip().startswith("hidden = 256"))
    assert client.request("textDocument/hover", {"textDocument": {"uri": u},
                                                 "position": {"line": line, "character": 6}}) is None


def test_hover_on_an_override_of_an_inherited_field(client):
    path = ROOT / "formulas" / "mayor.formula"
    text = path.read_text()
    u = open_doc(client, path, text)
    client.diagnostics(u)
    line = next(i for i, x in enumerate(text.split("\n")) if x.startswith("stage.sft.epochs"))
    result = client.request("textDocument/hover", {"textDocument": {"uri": u},
                                                   "position": {"line": line, "character": 12}})
    assert result["contents"]["value"].startswith("**stage.epochs**")


def test_completion_in_a_stage_block_offers_its_fields(client):
    text = EXAMPLE.read_text().replace("  epochs  = 8\n", "  ep\n")
    u = open_doc(client, scratch("tiny"), text)
    client.diagnostics(u)
    line = text.split("\n").index("  ep")
    result = client.request("textDocument/completion", {"textDocument": {"uri": u},
                                                        "position": {"line": line, "character": 4}})
    labels = {i["label"] for i in result["items"]}
    assert {"epochs", "lr", "method", "adapter"} <= labels


def test_completion_of_a_reference_offers_blocks_of_the_right_kind(client):
    text = EXAMPLE.read_text()
    u = open_doc(client, scratch("tiny"), text)
    client.diagnostics(u)
    line = text.split("\n").index("  from  = dpo")
    result = client.request("textDocument/completion", {"textDocument": {"uri": u},
                                                        "position": {"line": line, "character": 10}})
    labels = {i["label"] for i in result["items"]}
    assert {"dpo", "sft", "lm"} <= labels and "sessions" not in labels


def test_definition_across_extends(client):
    path = ROOT / "formulas" / "mayor.formula"
    text = path.read_text()
    u = open_doc(client, path, text)
    client.diagnostics(u)
    lines = text.split("\n")
    line = next(i for i, x in enumerate(lines) if x.startswith("stage.sft.epochs"))
    loc = client.request("textDocument/definition", {"textDocument": {"uri": u},
                                                     "position": {"line": line, "character": 7}})
    assert loc["uri"].endswith("formulas/lib/role.formula")
    target = (ROOT / "formulas/lib/role.formula").read_text().split("\n")[loc["range"]["start"]["line"]]
    assert "sft" in target
    line = next(i for i, x in enumerate(lines) if x.startswith("extends"))
    loc = client.request("textDocument/definition", {"textDocument": {"uri": u},
                                                     "position": {"line": line, "character": 10}})
    assert loc["uri"].endswith("formulas/lib/role.formula")


def test_formatting_returns_edits(client):
    text = EXAMPLE.read_text().replace("  epochs  = 8\n", "  epochs=8\n")
    u = open_doc(client, scratch("tiny"), text)
    client.diagnostics(u)
    edits = client.request("textDocument/formatting", {"textDocument": {"uri": u},
                                                       "options": {"tabSize": 2, "insertSpaces": True}})
    assert len(edits) == 1 and edits[0]["newText"] == EXAMPLE.read_text()


def test_diagnostics_of_an_edited_200_line_formula_are_fast(client):
    """The issue's target: diagnostics within 100 ms of a change to a 200-line formula."""
    text = EXAMPLE.read_text()
    extra = "".join(f"\nstage s{i} {{\n  method = sft\n  model  = tiny\n  data   = sessions\n"
                    f"  epochs = {i + 1}\n  lr     = lr\n}}\n" for i in range(16))
    text += extra
    assert text.count("\n") >= 200
    u = open_doc(client, scratch("big"), text)
    client.diagnostics(u)
    times = []
    for version in range(2, 12):
        edited = text.replace("epochs = 3\n", f"epochs = {version}0\n" if version % 2 else "epoch = 3\n")
        start = time.perf_counter()
        client.notify("textDocument/didChange", {"textDocument": {"uri": u, "version": version},
                                                 "contentChanges": [{"text": edited}]})
        diags = client.diagnostics(u)
        times.append(time.perf_counter() - start)
        assert any(d["code"] == "unknown-field" for d in diags) == (version % 2 == 0)
    median = sorted(times)[len(times) // 2]
    print(f"diagnostics latency, 200-line formula: median {median * 1000:.1f} ms, "
          f"max {max(times) * 1000:.1f} ms")
    assert median < 0.5  # 100 ms is the target; a loaded CI machine gets slack


def test_the_textmate_grammar_is_valid_and_the_extension_uses_it():
    import re

    grammar = json.loads((ROOT / "editors" / "formula.tmLanguage.json").read_text())
    assert grammar["scopeName"] == "source.formula"

    def patterns(node):
        if isinstance(node, dict):
            for key in ("match", "begin", "end"):
                if key in node:
                    yield node[key]
            for v in node.values():
                yield from patterns(v)
        elif isinstance(node, list):
            for v in node:
                yield from patterns(v)

    for p in patterns(grammar):
        re.compile(p)  # Oniguruma's syntax, in the subset Python shares
    header = next(v for k, v in grammar["repository"].items() if k == "block-header")
    assert re.match(header["match"], "stage sft {").groups() == ("stage", "sft")
    ext = ROOT / "editors" / "vscode"
    package = json.loads((ext / "package.json").read_text())
    [contributed] = package["contributes"]["grammars"]
    assert json.loads((ext / contributed["path"]).read_text()) == grammar
    assert package["contributes"]["languages"][0]["extensions"] == [".formula"]
    assert '"lsp"' in (ext / "package.json").read_text() and "LanguageClient" in (ext / "extension.js").read_text()


def test_check_does_not_import_the_language_server():
    code = ("import sys; from formula.cli.main import main; main(['check', 'examples']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pygls', 'lsprotocol')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().endswith("[]"), r.stdout + r.stderr


def test_pre_commit_hooks_run_check_and_fmt_check():
    yaml = pytest.importorskip("yaml")
    hooks = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert hooks["formula-check"]["entry"] == "formula check"
    assert hooks["formula-fmt"]["entry"] == "formula fmt --check"
    assert all(h["files"] == r"\.formula$" for h in hooks.values())


def test_an_unsaved_change_to_an_extended_formula_reaches_its_open_importer(client):
    base = scratch("base")
    base_uri = open_doc(client, base, EXAMPLE.read_text())
    client.diagnostics(base_uri)
    child = open_doc(client, scratch("child"), f'formula child {{\n  description = "c"\n}}\n\n'
                                               f'extends "{base.name}"\n\nstage.sft.epochs = 2\n')
    assert [d for d in client.diagnostics(child) if d["severity"] == 1] == []
    client.notify("textDocument/didChange", {
        "textDocument": {"uri": base_uri, "version": 2},
        "contentChanges": [{"text": EXAMPLE.read_text().replace("stage sft {", "stage sft2 {")
                            .replace("model   = sft", "model   = sft2")}]})
    client.diagnostics(base_uri)
    errors = [d for d in client.diagnostics(child) if d["severity"] == 1]
    assert errors and errors[0]["range"]["start"]["line"] == 6, errors

"""`formula serve`: the built GGUF behind llama.cpp's llama-server, answering chat completions with
OpenAI `tool_calls` on the example's tool prompts, and the Anthropic Messages API."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from formula.runtime.export import llama_server

ROOT = Path(__file__).resolve().parent.parent

# The tools the example's sessions call, with the parameters Claude Code gives them.
TOOLS = [{"type": "function", "function": {"name": name, "description": doc, "parameters": {
    "type": "object", "properties": {p: {"type": "string"} for p in params}, "required": [params[0]]}}}
    for name, doc, params in (
        ("Bash", "Run a shell command", ["command", "description"]),
        ("Read", "Read a file", ["file_path"]),
        ("Edit", "Replace a string in a file", ["file_path", "old_string", "new_string"]),
        ("Grep", "Search files for a pattern", ["pattern", "path"]),
    )]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=120).read())


def start(project, store, *args):
    port = free_port()
    env = {**os.environ, "FORMULA_HOME": str(store), "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "formula.cli", "serve", "tiny.formula", "--port", str(port),
                             *args], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.5)


def stop(proc) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(built_example, llama_server_binary):
    """`formula serve` on the built example, through llama-server."""
    project, store = built_example
    proc, url = start(project, store)
    yield url
    stop(proc)


def test_serve_answers_a_chat_completion(server):
    reply = post(f"{server}/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Merge the queue for gastown."}],
        "max_tokens": 48, "temperature": 0})
    text = reply["choices"][0]["message"]["content"]
    print(f"\nserved reply: {text!r} ({reply['choices'][0]['finish_reason']})")
    assert "Bash" in text  # the trained model answers as in its sessions
    assert reply["choices"][0]["finish_reason"] == "stop"  # it stopped at its end-of-turn token
    assert reply["model"] == "tiny/gguf.gguf.q8_0"  # the name clients configure: FORMULA/STEP


def test_serve_returns_tool_calls_on_the_examples_tool_prompts(server):
    """Each prompt of the tool_call scorer's suite, as text without tools and as a chat with tools:
    every reply the eval's scorer counts as a tool call comes back as OpenAI `tool_calls`, with
    the same name and arguments, and a conversation continues after the tool's result."""
    from formula.runtime.steps.eval import score

    cases = [json.loads(l) for l in (ROOT / "examples/evals/tiny.jsonl").read_text().splitlines() if l.strip()]
    called, scored = [], 0
    for case in cases:
        messages = [{"role": "user", "content": case["prompt"]}]
        raw = post(f"{server}/v1/chat/completions",
                   {"messages": messages, "max_tokens": 96, "temperature": 0})["choices"][0]["message"]["content"]
        choice = post(f"{server}/v1/chat/completions",
                      {"messages": messages, "tools": TOOLS, "max_tokens": 96, "temperature": 0})["choices"][0]
        calls = choice["message"].get("tool_calls") or []
        print(f"\n{case['prompt']!r}: {raw!r}\n  -> {choice['finish_reason']}: "
              f"{[(c['function']['name'], c['function']['arguments']) for c in calls]}")
        if score("tool_call", raw, case):
            scored += 1
            assert calls, f"the eval scores {raw!r} as a tool call, the server returned none"
            expected = json.loads(raw.split("<tool_call>", 1)[1].split("</tool_call>", 1)[0])
            assert calls[0]["function"]["name"] == expected["name"] == case["tool"]
            assert json.loads(calls[0]["function"]["arguments"]) == expected["arguments"]
            assert choice["finish_reason"] == "tool_calls" and calls[0]["type"] == "function" and calls[0]["id"]
        if calls:
            called.append((case, choice["message"]))
    print(f"\ntool_calls on {len(called)} of {len(cases)} tool prompts (the eval's scorer passes {scored})")
    assert len(called) * 2 >= len(cases)  # the eval gate's own bar: pass_rate >= 0.5

    # The agent runs the tool and sends its result back: the server takes the call in the history.
    case, message = called[0]
    history = [{"role": "user", "content": case["prompt"]}, message,
               {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "ok"}]
    reply = post(f"{server}/v1/chat/completions", {"messages": history, "tools": TOOLS, "max_tokens": 48,
                                                   "temperature": 0})
    assert reply["choices"][0]["finish_reason"] in ("stop", "tool_calls", "length")


def test_serve_speaks_the_anthropic_messages_api(server):
    """What Claude Code sends (ANTHROPIC_BASE_URL): a tool call comes back as a `tool_use` block."""
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    reply = post(f"{server}/v1/messages", {"model": "tiny/gguf.gguf.q8_0", "max_tokens": 96, "temperature": 0,
                                           "tools": tools,
                                           "messages": [{"role": "user", "content": "Merge the queue for beads."}]})
    uses = [b for b in reply["content"] if b["type"] == "tool_use"]
    print(f"\nanthropic reply: {reply['content']} ({reply['stop_reason']})")
    assert uses and uses[0]["name"] == "Bash" and isinstance(uses[0]["input"], dict)
    assert reply["stop_reason"] == "tool_use"


def test_serve_names_the_backends_it_has(built_example):
    project, store = built_example
    r = subprocess.run([sys.executable, "-m", "formula.cli", "serve", "tiny.formula", "--backend", "vllm"],
                       cwd=project, env={**os.environ, "FORMULA_HOME": str(store)}, capture_output=True, text=True)
    assert r.returncode == 2 and "llama-server or llama-cpp-python, not `vllm`" in r.stderr


def test_serve_without_a_build_says_what_to_do(tmp_path):
    (tmp_path / "f.formula").write_text("formula f {}\n")
    r = subprocess.run([sys.executable, "-m", "formula.cli", "serve", "f.formula"], cwd=tmp_path,
                       env={**os.environ, "FORMULA_HOME": str(tmp_path / "s")}, capture_output=True, text=True)
    assert r.returncode == 2 and "has not been built" in r.stderr and "formula build f.formula" in r.stderr


def test_no_compiler_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("FORMULA_LLAMA_SERVER", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert llama_server.find() is None
    with pytest.raises(llama_server.Unavailable, match=r"needs cmake and a C\+\+ compiler.*apt-get install cmake g\+\+"):
        llama_server.binary()
    assert not (tmp_path / "cache" / "formula" / "llama-server" / llama_server.version() / "bin").exists()


def test_a_named_binary_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("FORMULA_LLAMA_SERVER", str(tmp_path / "nope"))
    with pytest.raises(llama_server.Unavailable, match="FORMULA_LLAMA_SERVER=.*nope is not an executable"):
        llama_server.binary()

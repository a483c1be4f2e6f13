"""`formula serve`: a chat completion over HTTP from the built GGUF."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_a_chat_completion(built_example):
    pytest.importorskip("llama_cpp.server.app")
    project, store = built_example
    port = free_port()
    env = {**os.environ, "FORMULA_HOME": str(store), "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "formula.cli", "serve", "tiny.formula", "--port", str(port)],
                            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
                assert time.time() < deadline, "the server did not start"
                time.sleep(0.5)
        body = json.dumps({"messages": [{"role": "user", "content": "Merge the queue for gastown."}],
                           "max_tokens": 48, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
        reply = json.loads(urllib.request.urlopen(req, timeout=60).read())
        text = reply["choices"][0]["message"]["content"]
        print(f"\nserved reply: {text!r} ({reply['choices'][0]['finish_reason']})")
        assert "Bash" in text  # the trained model answers as in its sessions
        assert reply["choices"][0]["finish_reason"] == "stop"  # it stopped at its end-of-turn token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_serve_without_a_build_says_what_to_do(tmp_path):
    (tmp_path / "f.formula").write_text("formula f {}\n")
    r = subprocess.run([sys.executable, "-m", "formula.cli", "serve", "f.formula"], cwd=tmp_path,
                       env={**os.environ, "FORMULA_HOME": str(tmp_path / "s")}, capture_output=True, text=True)
    assert r.returncode == 2 and "has not been built" in r.stderr and "formula build f.formula" in r.stderr

"""A Hugging Face hub on localhost, at the HTTP level, for tests and benchmarks that must not use
the network: the endpoints huggingface_hub calls to resolve a revision and fetch a file
(`/api/models/{repo}/revision/{rev}`, `HEAD`/`GET /{repo}/resolve/{rev}/{file}`, and
`/api/models/{repo}/tree/{rev}` for snapshot_download), with the
headers it reads (X-Repo-Commit, ETag, X-Linked-Etag, Content-Length). It counts the bytes of
every file it serves. Point huggingface_hub at it with HF_ENDPOINT=FakeHub.url."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes | Path]  # a Path: served from disk (large files)

    def data(self, name: str) -> bytes:
        f = self.files[name]
        return f.read_bytes() if isinstance(f, Path) else f

    def size(self, name: str) -> int:
        f = self.files[name]
        return f.stat().st_size if isinstance(f, Path) else len(f)


@dataclass
class FakeHub:
    repos: dict[str, dict[str, Commit]] = field(default_factory=dict)  # repo → revision → commit
    served: dict[str, int] = field(default_factory=dict)  # file path → bytes of file bodies sent
    api_bytes: int = 0
    url: str = ""

    def push(self, repo: str, files: dict[str, bytes | Path], revision: str = "main") -> str:
        """A new commit of these files, which `revision` (and its sha) then names."""
        sha = hashlib.sha1(json.dumps(sorted((n, _digest(self, f)) for n, f in files.items())).encode()
                           + str(len(self.repos.get(repo, {}))).encode()).hexdigest()
        commit = Commit(sha, dict(files))
        self.repos.setdefault(repo, {})[revision] = commit
        self.repos[repo][sha] = commit
        return sha

    @property
    def file_bytes(self) -> int:
        return sum(self.served.values())

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.reply(body=False)

            def do_GET(self):
                self.reply(body=True)

            def reply(self, body: bool):
                path = unquote(urlparse(self.path).path)
                if path.startswith("/api/models/"):
                    return self.api(path[len("/api/models/"):])
                if "/resolve/" in path:
                    repo, rest = path.lstrip("/").split("/resolve/", 1)
                    rev, _, name = rest.partition("/")
                    commit = hub.repos.get(repo, {}).get(rev)
                    if commit is None or name not in commit.files:
                        return self.missing(f"{repo}@{rev}/{name}", body)
                    data = commit.data(name)
                    etag = hashlib.sha256(data).hexdigest() if name.endswith((".safetensors", ".bin")) else \
                        hashlib.sha1(data).hexdigest()
                    self.send_response(200)
                    self.send_header("X-Repo-Commit", commit.sha)
                    self.send_header("ETag", f'"{etag}"')
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if body:
                        self.wfile.write(data)
                        key = f"{repo}/{name}"
                        hub.served[key] = hub.served.get(key, 0) + len(data)
                    return None
                return self.missing(path, body)

            def api(self, rest: str):
                tree = "/tree/" in rest  # snapshot_download's listing (the peer in bench/hub_fetch)
                repo, _, rev = rest.partition("/tree/" if tree else "/revision/")
                commit = hub.repos.get(repo, {}).get(rev or "main")
                if commit is None:
                    return self.missing(f"{repo}@{rev}", True, "RevisionNotFound" if repo in hub.repos
                                        else "RepoNotFound")
                siblings = []
                for name in sorted(commit.files):
                    data = commit.data(name)
                    s = {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
                    if name.endswith((".safetensors", ".bin", ".pth", ".gguf")):
                        s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                    "pointerSize": 134}
                    siblings.append(s)
                payload = json.dumps(
                    [{"type": "file", "path": s["rfilename"], "size": s["size"], "oid": s["blobId"],
                      **({"lfs": {"oid": s["lfs"]["sha256"], "size": s["size"], "pointerSize": 134}}
                         if "lfs" in s else {})} for s in siblings] if tree else
                    {"id": repo, "modelId": repo, "sha": commit.sha, "private": False, "siblings": siblings}).encode()
                hub.api_bytes += len(payload)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def missing(self, what: str, body: bool, code: str = "EntryNotFound"):
                payload = json.dumps({"error": f"{what} not found"}).encode()
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _digest(hub: FakeHub, f: bytes | Path) -> str:
    return hashlib.sha1(f.read_bytes() if isinstance(f, Path) else f).hexdigest()

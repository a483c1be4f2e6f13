"""Hub models as a careful user fetches them (issue 15, item 3), against a hub faked at the HTTP
level (tests/fakehub.py): only the files a model needs are downloaded, revisions are pinned in
the lock file beside the formula and moved only by `formula lock --upgrade`, builds run offline
from the Hugging Face cache, and the stored weights share the cache's disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from formula.contract import hublock

from fakehub import FakeHub

pytest.importorskip("transformers")

REPO = "org/tiny"
FORMULA = """formula tiny {
  description = "a hub model"
}

model base {
  from = hub("org/tiny")
}

export gguf {
  from   = base
  quants = [f16]
}
"""
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_repo(folder: Path, seed: int = 0) -> dict[str, bytes]:
    """A real tiny Llama with its tokenizer, as a hub repository ships it, plus what a careful
    fetch leaves behind: pickle and original/ checkpoints, a GGUF, a README."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "hi", "there", "[UNK]"]
    inner = Tokenizer(models.WordLevel({t: i for i, t in enumerate(words)}, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  unk_token="[UNK]", additional_special_tokens=words[1:3])
    tok.chat_template = TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(folder)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    weights = files["model.safetensors"]
    files.update({"pytorch_model.bin": weights * 2, "original/consolidated.00.pth": weights * 2,
                  "tiny-f16.gguf": weights, "README.md": b"# tiny\n", ".gitattributes": b"*.bin filter=lfs\n"})
    return files


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    monkeypatch.setenv("FORMULA_HOME", str(tmp_path / "store"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield fake
    fake.stop()


def formula(tmp_path: Path, text: str = FORMULA) -> Path:
    f = tmp_path / "f.formula"
    f.write_text(text)
    return f


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "formula.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def needed(files: dict[str, bytes]) -> int:
    return sum(len(v) for k, v in files.items() if k in hublock.needed_files(list(files))[0])


def test_needed_files_prefer_safetensors_and_leave_the_rest():
    names = ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
             "model-00002-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "original/consolidated.00.pth", "model-q4_k_m.gguf", "tokenizer.json", "tokenizer.model",
             "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "README.md",
             "onnx/model.onnx", "flax_model.msgpack", "consolidated.safetensors", "params.json"]
    files, pickle = hublock.needed_files(names)
    assert not pickle
    assert files == ["chat_template.jinja", "config.json", "generation_config.json",
                     "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json",
                     "tokenizer_config.json"]  # tokenizer.model is read only without tokenizer.json
    files, pickle = hublock.needed_files(["config.json", "pytorch_model.bin", "tokenizer.model",
                                          "original/params.json"])
    assert pickle and files == ["config.json", "pytorch_model.bin", "tokenizer.model"]


def test_lock_pins_builds_fetch_only_what_the_model_needs_and_share_the_cache(hub, tmp_path):
    files = tiny_repo(tmp_path / "repo")
    sha = hub.push(REPO, files)
    f = formula(tmp_path)
    r = cli("lock", str(f))
    assert r.returncode == 0, r.stderr
    assert f"pinned {REPO}@main to {sha}" in r.stderr
    lock = json.loads(Path(f"{f}.lock").read_text())
    entry = lock["models"][0]
    assert (entry["repo"], entry["revision"], entry["commit"]) == (REPO, "main", sha)
    names = [x["name"] for x in entry["files"]]
    assert "model.safetensors" in names and not any(n.endswith((".bin", ".pth", ".gguf")) for n in names)
    weights = next(x for x in entry["files"] if x["name"] == "model.safetensors")
    assert weights["size"] == len(files["model.safetensors"]) and len(weights["sha256"]) == 64
    assert hub.file_bytes == 0  # resolving reads metadata only

    r = cli("build", str(f), "--only", "model.base", "--plain")
    assert r.returncode == 0, r.stderr + r.stdout
    assert hub.file_bytes <= 1.05 * needed(files), hub.served
    assert not any(k.endswith((".bin", ".pth", ".gguf", "README.md")) for k in hub.served)

    stored = list((tmp_path / "store" / "objects").glob("*/*/model.safetensors"))
    assert len(stored) == 1
    blob = next((tmp_path / "hf").glob("models--org--tiny/blobs/*"), None)
    cached = os.path.realpath(next((tmp_path / "hf").glob(f"models--org--tiny/snapshots/{sha}/model.safetensors")))
    assert os.stat(stored[0]).st_ino == os.stat(cached).st_ino and blob is not None  # one copy on disk
    assert os.stat(stored[0]).st_mode & 0o222 == 0  # read-only: a careless writer fails instead
    assert disk_usage(tmp_path / "hf", tmp_path / "store" / "objects") <= 1.1 * needed(files) + 64 * 1024

    # The store still trusts it (a hardlink keeps the sealed stat), and a second build is cached.
    r = cli("plan", str(f), "--only", "model.base")
    assert "cached" in r.stdout and "will run" not in r.stdout, r.stdout + r.stderr

    # Rewritten in place through the cache's path (against its read-only mode): the store's seal
    # sees the new mtime, rehashes, and will not use the object.
    os.chmod(cached, 0o644)
    with open(cached, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff" * 16)
    r = cli("plan", str(f), "--only", "model.base")
    assert "model.safetensors: content differs from when it was stored" in r.stdout, r.stdout + r.stderr

    # Built again, the step finds the damaged file in the cache: its bytes are checked against
    # the lock's sha256 before anything is made of them.
    r = cli("build", str(f), "--only", "model.base", "--plain")
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
    assert f"model.safetensors of {REPO} at {sha} has sha256" in r.stdout + r.stderr, r.stdout + r.stderr
    assert f"the lock file pins {weights['sha256']}" in r.stdout + r.stderr


def test_weights_are_copied_where_they_cannot_be_linked(tmp_path, monkeypatch):
    from formula.runtime import hub

    src = tmp_path / "blob"
    src.write_bytes(b"w" * 1000)

    def cross_device(*args):
        raise OSError(18, "Invalid cross-device link")  # EXDEV

    monkeypatch.setattr(os, "link", cross_device)
    shared = hub.Shared()
    hub.share(src, tmp_path / "out", shared)
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "out").st_ino != os.stat(src).st_ino
    assert shared.linked == 0 and shared.cloned + shared.copied == 1000


def disk_usage(*folders: Path) -> int:
    """Bytes on disk, each inode once (what `du` of the folders together says)."""
    seen, total = set(), 0
    for folder in folders:
        for p in folder.rglob("*"):
            st = p.lstat()
            if p.is_file() and not p.is_symlink() and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def test_a_moved_main_changes_the_key_only_after_upgrade(hub, tmp_path):
    first = hub.push(REPO, tiny_repo(tmp_path / "a", seed=0))
    f = formula(tmp_path)
    assert cli("lock", str(f)).returncode == 0
    key = cli("explain", str(f), "model.base").stdout
    second = hub.push(REPO, tiny_repo(tmp_path / "b", seed=1))  # `main` moves on the hub
    assert cli("explain", str(f), "model.base").stdout == key  # pinned: nothing changed
    r = cli("lock", str(f))
    assert r.returncode == 0 and "moved" not in r.stderr
    r = cli("lock", str(f), "--upgrade")
    assert f"moved {REPO}@main from {first} to {second}" in r.stderr, r.stderr
    assert json.loads(Path(f"{f}.lock").read_text())["models"][0]["commit"] == second
    moved = cli("explain", str(f), "model.base").stdout
    assert moved != key and second in moved


def test_build_without_a_lock_pins_and_says_so_then_builds_offline_from_the_cache(hub, tmp_path):
    sha = hub.push(REPO, tiny_repo(tmp_path / "repo"))
    f = formula(tmp_path)
    r = cli("build", str(f), "--only", "model.base", "--plain")
    assert r.returncode == 0, r.stderr
    assert f"formula build: pinned {REPO}@main to {sha}" in r.stderr and Path(f"{f}.lock").is_file()
    served = hub.file_bytes
    hub.stop()  # no hub at all now
    names = [x["name"] for x in json.loads(Path(f"{f}.lock").read_text())["models"][0]["files"]]
    Path(f"{f}.lock").unlink()
    r = cli("lock", str(f), "--offline")  # pinned again from the cache alone
    assert f"pinned {REPO}@main to {sha}" in r.stderr and "from the Hugging Face cache" in r.stderr, r.stderr
    assert [x["name"] for x in json.loads(Path(f"{f}.lock").read_text())["models"][0]["files"]] == names
    r = cli("build", str(f), "--only", "model.base", "--plain", "--force", "model.base", "--offline")
    assert r.returncode == 0, r.stderr + r.stdout
    assert hub.file_bytes == served

    # A pin whose commit is not cached: a clear error, no traceback, nothing stored.
    lock = json.loads(Path(f"{f}.lock").read_text())
    lock["models"][0]["commit"] = "0" * 40
    Path(f"{f}.lock").write_text(json.dumps(lock))
    r = cli("build", str(f), "--only", "model.base", "--plain", "--offline")
    assert r.returncode != 0
    out = r.stderr + r.stdout
    assert "is not in the Hugging Face cache" in out and "Traceback" not in out, out


def test_check_reports_a_stale_lock(hub, tmp_path):
    hub.push(REPO, tiny_repo(tmp_path / "repo"))
    f = formula(tmp_path)
    assert cli("lock", str(f)).returncode == 0
    r = cli("check", str(f))
    assert r.returncode == 0 and "stale-lock" not in r.stderr
    f.write_text(FORMULA.replace('hub("org/tiny")', 'hub("org/tiny", "v2")'))
    r = cli("check", str(f))
    assert r.returncode == 0 and "stale-lock" in r.stderr and "`org/tiny` at `v2` is not pinned" in r.stderr

    Path(f"{f}.lock").write_text('{"format": 1, "models": [{"repo": "org/tiny"}]}')
    r = cli("check", str(f))
    assert r.returncode == 1 and "bad-lock" in r.stderr and "Traceback" not in r.stderr
    r = cli("lock", str(f))  # written again from nothing (the hub has no v2: a clear error)
    assert r.returncode == 1 and "writing it again" in r.stderr and "cannot resolve org/tiny@v2" in r.stderr
    f.write_text(FORMULA)
    assert cli("lock", str(f)).returncode == 0 and cli("check", str(f)).returncode == 0


def test_pickle_only_weights_are_refused_before_any_byte_of_them(hub, tmp_path):
    files = tiny_repo(tmp_path / "repo")
    del files["model.safetensors"]
    hub.push(REPO, files)
    f = formula(tmp_path)
    r = cli("lock", str(f))
    assert r.returncode == 0 and "no safetensors weights, only pickle files (pytorch_model.bin)" in r.stderr
    r = cli("build", str(f), "--only", "model.base", "--plain")
    assert r.returncode != 0 and "allow_pickle = true" in r.stderr + r.stdout
    assert not any(k.endswith(".bin") for k in hub.served)


def test_a_hub_tokenizer_fetches_the_tokenizer_files_only(hub, tmp_path):
    files = tiny_repo(tmp_path / "repo")
    sha = hub.push(REPO, files)
    f = formula(tmp_path, FORMULA.replace('from = hub("org/tiny")',
                                          'from      = path("repo")\n  tokenizer = hub("org/tiny")'))
    r = cli("build", str(f), "--only", "model.base", "--plain")
    assert r.returncode == 0, r.stderr + r.stdout
    assert f"pinned {REPO}@main to {sha}" in r.stderr
    assert sorted(k.split("/", 2)[2] for k in hub.served) == [
        "chat_template.jinja", "config.json", "tokenizer.json", "tokenizer_config.json"]


def test_check_reads_the_family_at_the_pinned_commit(tmp_path, monkeypatch):
    """`formula check` knows a cached hub model's family from its config.json at the commit the
    lock pins, not at wherever `main` points in the cache now."""
    from formula.compiler.pipeline import compile_formula

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    folder = tmp_path / "hf" / "models--org--tiny"
    old, new = "a" * 40, "b" * 40
    for commit, family in ((old, "llama"), (new, "gpt2")):
        (folder / "snapshots" / commit).mkdir(parents=True)
        (folder / "snapshots" / commit / "config.json").write_text(json.dumps({"model_type": family}))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(new)  # main moved to a gpt2 model since the pin
    f = formula(tmp_path)

    def codes() -> set[str]:
        return {d.code for d in compile_formula(str(f)).diagnostics}

    assert "unsupported-family" in codes()  # unpinned: main, as the cache has it
    hublock.write(f"{f}.lock", {(REPO, "main"): hublock.Pin(REPO, "main", old, (hublock.LockedFile("config.json"),))})
    assert "unsupported-family" not in codes()  # pinned to the llama commit

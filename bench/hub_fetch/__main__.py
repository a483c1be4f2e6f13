"""A hub model fetched by the model step, against a hub faked at the HTTP level (tests/fakehub.py):
bytes downloaded (files and API answers) against the files the model needs, and disk used (Hugging Face cache and store
together, each inode once, as `du` of both counts) against one copy of those files.

    python bench/hub_fetch [MB]      (default 200 MB of safetensors weights, in two shards)

The repository also ships what a careless fetch takes: pickle weights, Meta's original/
checkpoint and a GGUF, each as large as the weights (sparse files: they cost no disk here). The
peer is what the model step did before (snapshot_download of the repository without pickle
files, then a copy into the store). Targets (issue 15): bytes ≤ 1.05× the needed files, disk
≤ 1.1× one copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
from fakehub import FakeHub  # noqa: E402
from result import result  # noqa: E402
from test_hub import FORMULA, tiny_repo  # noqa: E402

from formula.contract import hublock  # noqa: E402


def disk(*folders: Path) -> int:
    seen, total = set(), 0
    for folder in folders:
        for p in folder.rglob("*"):
            st = p.lstat()
            if p.is_file() and not p.is_symlink() and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


def repo(folder: Path, mb: int) -> dict:
    import numpy as np
    from safetensors.numpy import save_file

    files: dict = tiny_repo(folder / "tiny")
    del files["model.safetensors"]
    shard = mb * (1 << 20) // 2 // 4
    rng = np.random.default_rng(0)
    index = {"metadata": {"total_size": 2 * shard * 4}, "weight_map": {}}
    for i in (1, 2):
        name = f"model-0000{i}-of-00002.safetensors"
        save_file({f"layer{i}.weight": rng.standard_normal(shard, dtype=np.float32)}, str(folder / name))
        files[name] = folder / name
        index["weight_map"][f"layer{i}.weight"] = name
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    for name in ("pytorch_model.bin", "original/consolidated.00.pth", "model-f16.gguf"):
        sparse = folder / name.replace("/", "_")
        with open(sparse, "wb") as fh:
            fh.truncate(mb << 20)
        files[name] = sparse
    del files["original/consolidated.00.pth"]  # served from a path with a folder in its name
    files["original/consolidated.00.pth"] = folder / "original_consolidated.00.pth"
    return files


def main() -> None:
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory(dir=ROOT / ".formula" if (ROOT / ".formula").is_dir() else None) as tmp:
        t = Path(tmp)
        hub = FakeHub().start()
        files = repo(t, mb)
        hub.push("org/tiny", files)
        sizes = {n: (f.stat().st_size if isinstance(f, Path) else len(f)) for n, f in files.items()}
        need = sum(sizes[n] for n in hublock.needed_files(list(files))[0])
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(t / "hf"), "HF_HOME": str(t / "hh"),
               "FORMULA_HOME": str(t / "store"), "HF_HUB_DISABLE_XET": "1"}
        (t / "f.formula").write_text(FORMULA)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "formula.cli", "build", str(t / "f.formula"), "--only",
                               "model.base", "--plain"], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode:
            sys.exit(proc.stderr + proc.stdout)
        ours_bytes, ours_disk = hub.file_bytes + hub.api_bytes, disk(t / "hf", t / "store" / "objects")

        # The peer: the whole repository but pickle files, then a copy into a store folder.
        hub.served.clear()
        hub.api_bytes = 0
        peer = subprocess.run([sys.executable, "-c", (
            "import shutil, sys; from huggingface_hub import snapshot_download; "
            "p = snapshot_download('org/tiny', ignore_patterns=['*.bin', '*.pt', '*.pth', '*.ckpt', '*.pkl']); "
            "shutil.copytree(p, sys.argv[1], ignore=shutil.ignore_patterns('*.bin', '*.pth'))"), str(t / "copy")],
            env={**env, "HF_HUB_CACHE": str(t / "hf_peer")}, capture_output=True, text=True)
        if peer.returncode:
            sys.exit(peer.stderr)
        peer_bytes, peer_disk = hub.file_bytes + hub.api_bytes, disk(t / "hf_peer", t / "copy")
        hub.stop()
        print(f"needed files {need / 1e6:.1f} MB; build {wall:.1f}s; downloaded {ours_bytes / 1e6:.1f} MB "
              f"(before: {peer_bytes / 1e6:.1f} MB); HF cache + store on disk {ours_disk / 1e6:.1f} MB "
              f"(before: {peer_disk / 1e6:.1f} MB)")
        result(f"hub fetch bytes, {mb} MB model", round(ours_bytes / need, 3), "x needed", "<= 1.05x",
               round(peer_bytes / need, 3), "snapshot_download", round(ours_bytes / peer_bytes, 3))
        result(f"hub fetch disk, {mb} MB model", round(ours_disk / need, 3), "x one copy", "<= 1.1x",
               round(peer_disk / need, 3), "snapshot_download + copy", round(ours_disk / peer_disk, 3))


if __name__ == "__main__":
    main()

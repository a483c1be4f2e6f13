"""Download speed of the shared cache (formula/runtime/remote.py) against a plain fsspec copy of
the same object files, from a shared folder and from an S3-compatible server (moto's, started
here, when `moto[server]` and s3fs are installed).

    python bench/remote_cache [MEGABYTES]     (default 256)

A store is filled with step outputs of the shapes a build makes (one large weights file, a
folder of many small shards, a few small files), pushed, and fetched into an empty store the way
`formula build --remote` does: step by step, each record read, each seal read, every file
downloaded into tmp/, hashed against its seal, renamed into objects/. The peer is
`fs.get(objects/, recursive=True)`: the bytes alone, nothing checked. Each side runs three times
into a fresh folder; the best time counts. Target (issue 19): time dominated by download, i.e.
ratio (our MB/s over the plain copy's) ≥ 0.8.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from result import result  # noqa: E402


def fill(store, megabytes: int) -> list[str]:
    """Step outputs totalling about `megabytes`: (weights, 100 shards, 3 small files) per step."""
    keys = []
    per_step = megabytes * 1_000_000 // 3
    for step in range(3):
        out = store.temp_dir(f"{step:016d}") / "out"
        (out / "shards").mkdir(parents=True)
        (out / "model.safetensors").write_bytes(os.urandom(per_step // 2))
        for i in range(100):
            (out / "shards" / f"{i:05d}.arrow").write_bytes(os.urandom(per_step // 2 // 100))
        for name in ("config.json", "metrics.json", "checks.json"):
            (out / name).write_text('{"step": %d}' % step)
        digest, _ = store.commit_output(out)
        key = f"{step:02d}" + "b" * 62
        store.record(key, {"key": key, "output": digest, "step": f"s{step}"})
        keys.append(key)
    return keys


def measure(url: str, options: dict, source, keys: list[str], folder: Path) -> tuple[float, float, int]:
    """(our seconds, plain copy seconds, bytes), best of three each."""
    from fsspec.core import url_to_fs

    from formula.runtime.remote import Remote
    from formula.runtime.store import Store

    Remote(url, source, **options).check(create=True)
    pusher = Remote(url, source, **options)
    pusher.push(keys)
    print(f"  push: {pusher.transfer.rate()}", flush=True)
    ours, plain, size = [], [], 0
    fs, root = url_to_fs(url, **options)
    for i in range(3):
        store = Store(folder / f"ours{i}")
        remote = Remote(url, store, **options)
        started = time.perf_counter()
        for key in keys:
            assert remote.fetch(key) is not None
        ours.append(time.perf_counter() - started)
        size = remote.transfer.bytes
        shutil.rmtree(store.root)
        target = folder / f"plain{i}"
        started = time.perf_counter()
        fs.get(f"{root.rstrip('/')}/objects/", str(target) + "/", recursive=True)
        plain.append(time.perf_counter() - started)
        shutil.rmtree(target)
    return min(ours), min(plain), size


def report(where: str, ours: float, plain: float, size: int) -> None:
    our_rate, plain_rate = size / 1e6 / ours, size / 1e6 / plain
    print(f"  {where}: ours {size / 1e6:.0f} MB in {ours:.2f}s ({our_rate:.0f} MB/s, verified); plain "
          f"fsspec copy {plain:.2f}s ({plain_rate:.0f} MB/s)", flush=True)
    result(f"shared cache download ({where})", round(our_rate, 1), "MB/s", "ratio >= 0.8",
           round(plain_rate, 1), "fsspec get", round(our_rate / plain_rate, 3))


def main() -> None:
    from formula.runtime.store import Store

    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
        folder = Path(tmp)
        source = Store(folder / "source")
        keys = fill(source, megabytes)
        print(f"shared folder ({megabytes} MB in {len(keys)} steps)", flush=True)
        report("shared folder", *measure(str(folder / "shared"), {}, source, keys, folder))
        try:
            import s3fs  # noqa: F401
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            print(f"S3: skipped ({exc}; pip install 'formula[remote,test]')")
            return
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "bench", "secret": "bench"}
            import s3fs as s3

            s3.S3FileSystem(**options).mkdir("bench")
            print(f"S3 (moto server on this machine, {megabytes} MB)", flush=True)
            report("S3, moto server", *measure("s3://bench/cache", options, source, keys, folder))
        finally:
            server.stop()


if __name__ == "__main__":
    main()

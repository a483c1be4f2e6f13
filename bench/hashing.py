"""Hashing throughput and the stat memo on a large file.

    python bench/hashing.py [SIZE_GIB]     (default 2)

Prints the first hash's speed (target over 1 GB/s) and the time to "rehash" the unchanged file
through the stat memo in a new run (target under 10 ms), each in a fresh process so that the
memo is read from disk as a real second build would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result import result  # noqa: E402

PROBE = """
import sys, time
from formula.runtime.hashing import Hasher
t = time.perf_counter()
with Hasher(sys.argv[2]) as h:
    h.file(sys.argv[1])
    n = h.files_hashed
print(time.perf_counter() - t, n)
"""


def main() -> None:
    gib = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    size = int(gib * (1 << 30))
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.bin"
        chunk = os.urandom(1 << 24)
        with open(big, "wb") as fh:
            for _ in range(size // len(chunk)):
                fh.write(chunk)
        old = time.time() - 60
        os.utime(big, (old, old))  # older than the racy window, so the memo keeps it
        memo = Path(tmp) / "memo.sqlite"
        subprocess.run(["sync"])
        first, n1 = map(float, subprocess.run([sys.executable, "-c", PROBE, str(big), str(memo)],
                                              capture_output=True, text=True, check=True).stdout.split())
        again, n2 = map(float, subprocess.run([sys.executable, "-c", PROBE, str(big), str(memo)],
                                              capture_output=True, text=True, check=True).stdout.split())
    rate = size / first / 1e9
    print(f"first hash of {gib:g} GiB:   {first:.3f} s = {rate:.2f} GB/s "
          f"(target > 1 GB/s: {'met' if rate > 1 else 'NOT met'}; files hashed: {n1:.0f})")
    print(f"rehash, unchanged file:  {again * 1000:.2f} ms "
          f"(target < 10 ms: {'met' if again < 0.010 else 'NOT met'}; files hashed: {n2:.0f})")
    result(f"first hash of {gib:g} GiB", round(rate, 2), "GB/s", "> 1 GB/s")
    result("rehash of an unchanged file", round(again * 1000, 2), "ms", "< 10 ms")


if __name__ == "__main__":
    main()

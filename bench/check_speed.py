"""How fast `formula check` is: the repository's formulas, CLI start-up, and 200 formulas.

    python bench/check_speed.py

Targets (issue 2): check of formulas/ and examples/ under 0.3 s wall; `formula --help` under
150 ms; 200 generated formulas checked in under 2 s. Each figure is the median of several runs
of a fresh process, so it includes interpreter start-up, as a user sees it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from result import result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNS = 7


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # as installed


def wall(cmd: list[str], cwd: Path = ROOT) -> float:
    times = []
    subprocess.run(cmd, cwd=cwd, capture_output=True, env=ENV)  # writes byte-code caches
    for _ in range(RUNS):
        start = time.perf_counter()
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
        times.append(time.perf_counter() - start)
        if r.returncode not in (0,):
            raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return statistics.median(times)


def generated_formulas(folder: Path, n: int = 200) -> None:
    """Variations of the example: different shapes, rates, quants and gates per file."""
    shutil.copytree(ROOT / "examples" / "data", folder / "data", dirs_exist_ok=True)
    template = (ROOT / "examples" / "tiny.formula").read_text()
    for i in range(n):
        text = (template.replace("formula tiny", f"formula tiny_{i}")
                .replace("hidden = 256", f"hidden = {256 * (1 + i % 4)}")
                .replace("var lr: float = 2e-3", f"var lr: float = {1 + i % 9}e-3")
                .replace("epochs  = 2", f"epochs  = {1 + i % 5}")
                .replace("quants = [f16, q8_0]", "quants = [f16, q8_0]" if i % 2 else
                         "quants = [f16, q8_0, q4_k_m]"))
        (folder / f"tiny_{i:03}.formula").write_text(text)
    shutil.copytree(ROOT / "examples" / "evals", folder / "evals", dirs_exist_ok=True)  # check reads suites


def main() -> None:
    formula = [sys.executable, "-m", "formula.cli"]
    script = shutil.which("formula")
    entry = [script] if script else formula
    rows = []
    rows.append(("check formulas/ examples/", wall(entry + ["check", "formulas", "examples"]), 0.3))
    rows.append(("formula --help", wall(entry + ["--help"]), 0.150))
    import_cmd = [sys.executable, "-c", "import formula.cli.main"]
    bare = wall([sys.executable, "-c", "pass"])
    rows.append(("import CLI (minus bare python)", max(0.0, wall(import_cmd) - bare), 0.150))
    with tempfile.TemporaryDirectory() as tmp:
        generated_formulas(Path(tmp))
        rows.append(("check 200 generated formulas", wall(entry + ["check", tmp]), 2.0))
    print(f"{'figure':<34} {'ours':>9} {'target':>9}  ok")
    for name, value, target in rows:
        print(f"{name:<34} {value * 1000:>7.0f}ms {target * 1000:>7.0f}ms  {'yes' if value <= target else 'NO'}")
    print(f"(bare python start-up: {bare * 1000:.0f} ms; median of {RUNS} runs each)")
    for name, value, target in rows:
        result(name, round(value * 1000, 1), "ms", f"<= {target * 1000:.0f} ms")


if __name__ == "__main__":
    main()

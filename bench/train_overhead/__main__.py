"""The train step through `formula build` against a plain script that calls trl with the same
model, data and hyperparameters, in one run: wall time and peak memory.

    python bench/train_overhead [EPOCHS]     (default 8: the example's `lm` stage, 96 steps)

Both train the example's full-weight `lm` stage on its tokenized sessions, on the CPU. Ours is
the whole `formula build --only train.lm --force train.lm` (compile, keys, store, the step
process with its checkpoints every 50 steps, metrics, loss PNG, lineage); the peer is a script
that loads the same model and Arrow data and runs `SFTTrainer` with the same arguments and saves
the weights (no checkpoints). Both train in f32: trl's SFTConfig turns bf16 autocast on by
default, even on a CPU, where ours keeps f32 unless the formula asks (`precision = bf16`); the
peer is told `bf16=False` so that the precision, a hyperparameter, is the same. Each side runs
fresh, alternating, three times; the best wall time and the largest peak RSS (of the process and
its children) count. Targets (issue 5): wall ratio <= 1.05, peak memory ratio <= 1.10.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from result import result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent

PLAIN = """
import sys
import datasets, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_dir, data_dir, out, epochs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
data = datasets.load_from_disk(data_dir + "/train")
data = data.remove_columns([c for c in data.column_names if c not in ("input_ids", "labels")])
args = SFTConfig(output_dir=out + "/checkpoints", num_train_epochs=epochs, learning_rate=1e-3,
                 per_device_train_batch_size=8, seed=17, data_seed=17, logging_steps=5,
                 save_strategy="no", report_to="none", use_cpu=True, max_length=None,
                 dataloader_num_workers=0, bf16=False)
SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok).train()
model.save_pretrained(out, safe_serialization=True)
"""


def measure(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of the process or any child it waited for)."""
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        if status != 0:
            err.seek(0)
            raise SystemExit(f"failed: {' '.join(cmd)}\n{err.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    epochs = sys.argv[1] if len(sys.argv) > 1 else "8"
    with tempfile.TemporaryDirectory(prefix="bench-train-") as t:
        tmp = Path(t)
        project = tmp / "p"
        project.mkdir()
        for name in ("tiny.formula", "data", "evals"):
            src = ROOT / "examples" / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
        env = {**os.environ, "FORMULA_HOME": str(tmp / "store"), "NO_COLOR": "1", "PYTHONDONTWRITEBYTECODE": ""}
        formula = [sys.executable, "-m", "formula.cli"]
        overrides = [f"stage.lm.epochs={epochs}"]
        subprocess.run([*formula, "build", "tiny.formula", "--plain", "--only", "train.lm", *overrides],
                       cwd=project, env=env, check=True, capture_output=True)

        def output(step: str) -> str:
            shown = subprocess.run([*formula, "show", f"tiny:{step}"], cwd=project, env=env,
                                   capture_output=True, text=True, check=True).stdout
            return next(l.split()[1] for l in shown.splitlines() if l.startswith("output"))

        model, data = output("model.tiny"), output("tokenize.sessions.tiny")
        (tmp / "plain.py").write_text(PLAIN)
        ours_runs, plain_runs = [], []
        for _ in range(3):
            ours_runs.append(measure([*formula, "build", "tiny.formula", "--plain", "--only", "train.lm",
                                      "--force", "train.lm", *overrides], project, env))
            shutil.rmtree(tmp / "plain-out", ignore_errors=True)
            plain_runs.append(measure([sys.executable, str(tmp / "plain.py"), model, data,
                                       str(tmp / "plain-out"), epochs], project, env))
        ow, om = min(r[0] for r in ours_runs), max(r[1] for r in ours_runs)
        pw, pm = min(r[0] for r in plain_runs), max(r[1] for r in plain_runs)
        print(f"train stage `lm` of the example, full weights, {epochs} epochs, CPU")
        print(f"{'':28}{'wall s':>10}{'peak MB':>10}")
        print(f"{'formula build (train step)':28}{ow:>10.2f}{om:>10.0f}")
        print(f"{'plain trl script':28}{pw:>10.2f}{pm:>10.0f}")
        print(f"wall ratio {ow / pw:.3f} (target <= 1.05); peak memory ratio {om / pm:.3f} (target <= 1.10)")
        result("train step wall", round(ow, 2), "s", "<= 1.05x", round(pw, 2), "plain trl script", round(ow / pw, 3))
        result("train step peak memory", round(om), "MB", "<= 1.10x", round(pm), "plain trl script",
               round(om / pm, 3))
        print("runs (wall s): ours " + ", ".join(f"{r[0]:.2f}" for r in ours_runs)
              + "; plain " + ", ".join(f"{r[0]:.2f}" for r in plain_runs))


if __name__ == "__main__":
    main()

"""lm-evaluation-harness (the `lmeval` extra) on a model folder, for `lm_eval(TASK).FIGURE`.

The harness runs the task through its HFLM wrapper on the safetensors folder and logs every
document's figures; those per-document figures are what the bootstrap resamples (units are the
documents), so a figure gets an interval and a `significant(...)` check pairs two models on the
same documents, as for the other metrics. A figure the harness only aggregates (the perplexities
of a rolling-loglikelihood task) gets the interval of its standard error instead.

A task file (`.yaml`) is found by indexing its folder alone and run from that folder (its relative
`data_files` are read there), offline: nothing is downloaded. A task of the harness's registry (`hellaswag`) reads its
dataset the way `datasets` does, so offline it must be in the local cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from formula.runtime.step import fail

LIBRARIES = ("lm_eval",)
Z95 = 1.959964  # a two-sided 95% normal interval from a standard error


def offline(cache: Path) -> None:
    """No download, and the datasets' cache files in the step's own folder (to be called before
    `datasets` is imported: it reads these once)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_DATASETS_CACHE"] = str(cache)


def task_file(folder: Path, file: str) -> tuple[str, Any]:
    """(task name, the harness's task manager) for a task file: its folder indexed alone."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        fail(f"lm_eval needs lm-evaluation-harness ({exc}); install the extra: pip install 'formula[lmeval]'")

    manager = TaskManager(include_path=str(folder), include_defaults=False)
    path = (folder / file).resolve()
    names = [name for name, entry in manager.task_index.items()
             if entry.yaml_path is not None and Path(entry.yaml_path).resolve() == path]
    if not names:
        fail(f"{path}: lm-evaluation-harness finds no task in it (a task YAML names its `task`)")
    return names[0], manager


def run_task(folder: Path, task: str, limit: int, num_fewshot: int, batch_size: int,
             manager: Any = None) -> dict:
    """{"figures": {name: value}, "stderr": {name: se}, "units": [...], "stats": {name: (sums,
    counts)}, "documents": n, "task": name, "version": the harness's}."""
    if not (folder / "config.json").is_file():
        fail(f"lm_eval measures a model folder (safetensors); {folder} holds none")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        fail(f"lm_eval needs lm-evaluation-harness ({exc}); install the extra: pip install 'formula[lmeval]'")
    import torch

    model = HFLM(pretrained=str(folder), device="cuda" if torch.cuda.is_available() else "cpu",
                 batch_size=batch_size, dtype="float32")
    try:
        out = lm_eval.simple_evaluate(model=model, tasks=[task], limit=limit, num_fewshot=num_fewshot,
                                      log_samples=True, bootstrap_iters=0, task_manager=manager)
    except KeyError as exc:  # a task name the registry does not know
        fail(f"lm_eval: lm-evaluation-harness has no task {exc}; `lm-eval ls tasks` lists them, "
             "or name a task file (.yaml)")
    if out is None:
        fail("lm_eval: lm-evaluation-harness returned no results")
    name = task
    results = out["results"].get(name)
    if results is None:
        fail(f"lm_eval: no results for {name}; the harness reported {', '.join(out['results'])}")
    figures: dict[str, float] = {}
    stderr: dict[str, float] = {}
    for key, value in sorted(results.items(), key=lambda kv: not kv[0].endswith(",none")):
        metric, _, _ = key.partition(",")
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if metric.endswith("_stderr"):
            stderr.setdefault(metric[: -len("_stderr")], float(value))
        else:
            figures.setdefault(metric, float(value))
    units: list[str] = []
    per_doc: dict[str, list[float]] = {f: [] for f in figures}
    for sub, samples in sorted(out.get("samples", {}).items()):
        for s in samples:
            units.append(f"{sub}:{s['doc_id']}")
            for f in figures:
                v = s.get(f)
                per_doc[f].append(float(v) if isinstance(v, (int, float)) else float("nan"))
    stats = {f: (vals, [1.0] * len(vals)) for f, vals in per_doc.items()
             if vals and not any(v != v for v in vals)}  # NaN: not a per-document figure
    return {"figures": figures, "stderr": stderr, "units": units, "stats": stats, "documents": len(units),
            "task": name, "version": getattr(lm_eval, "__version__", "")}

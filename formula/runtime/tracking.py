"""Experiment tracking: a build's training steps report their metrics to MLflow, TensorBoard,
Trackio or another tracker transformers integrates, when the user asks (`build --report-to`).

Where metrics are sent is not part of what a step makes: the choice travels to the step in its
environment, never in its configuration, so turning tracking on or off changes no step key and
rebuilds nothing (a step reused from the store is not reported again). The step's own metrics
(`metrics.jsonl` in its output) are written either way. Each tracker reads its usual environment
variables (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, TENSORBOARD_LOGGING_DIR, TRACKIO_PROJECT,
…); the build fills in local defaults under the store for those the user did not set, so that
`--report-to tensorboard` works with nothing else configured.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

REPORT_TO_ENV = "FORMULA_REPORT_TO"   # comma-separated tracker names, read by the train step
STEP_ENV = "FORMULA_STEP"             # set by the build for every step: its name (the run's name)
STEP_KEY_ENV = "FORMULA_STEP_KEY"     # and its key


@dataclass(frozen=True)
class Tracker:
    name: str          # transformers' `report_to` name
    module: str        # what must be importable
    install: str       # what to install when it is not


# The trackers transformers has callbacks for that we document and test; any other name
# transformers knows is passed through as it is (`report_to` on TrainingArguments).
TRACKERS = {t.name: t for t in (
    Tracker("mlflow", "mlflow", "pip install 'formula[track]'  (or mlflow, or mlflow-skinny with a tracking server)"),
    Tracker("tensorboard", "tensorboard", "pip install 'formula[track]'  (or tensorboard)"),
    Tracker("trackio", "trackio", "pip install trackio"),
    Tracker("wandb", "wandb", "pip install wandb"),
    Tracker("comet_ml", "comet_ml", "pip install comet_ml"),
    Tracker("clearml", "clearml", "pip install clearml"),
    Tracker("dvclive", "dvclive", "pip install dvclive"),
    Tracker("swanlab", "swanlab", "pip install swanlab"),
)}


class TrackingError(ValueError):
    pass


def parse(value: str) -> tuple[str, ...]:
    """`mlflow,tensorboard` → the tracker names, checked: known and installed. `none`: none."""
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if names in ((), ("none",)):
        return ()
    for name in names:
        tracker = TRACKERS.get(name)
        if tracker is None:
            raise TrackingError(f"--report-to: no tracker is called `{name}` "
                                f"(known: {', '.join(TRACKERS)}, or `none`)")
        if importlib.util.find_spec(tracker.module) is None:
            raise TrackingError(f"--report-to {name}: `{tracker.module}` is not installed here: "
                                f"{tracker.install}")
    return names


def build_env(names: tuple[str, ...], store_root: Path, formula_name: str,
              environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the build gives its steps so they report to `names`: the choice, and
    local defaults (under `<store>/tracking/`) for what the user left unset."""
    if not names:
        return {}
    environ = dict(os.environ) if environ is None else environ
    folder = store_root / "tracking"
    env = {REPORT_TO_ENV: ",".join(names)}
    if "mlflow" in names:
        if not environ.get("MLFLOW_TRACKING_URI"):
            if importlib.util.find_spec("sqlalchemy") is None:
                raise TrackingError(
                    "--report-to mlflow: set MLFLOW_TRACKING_URI to your MLflow server "
                    "(http://host:5000), or install the full `mlflow` package for a local "
                    f"database under {folder}")
            folder.mkdir(parents=True, exist_ok=True)
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        env.setdefault("MLFLOW_EXPERIMENT_NAME", environ.get("MLFLOW_EXPERIMENT_NAME") or formula_name)
    if "trackio" in names and not environ.get("TRACKIO_PROJECT"):
        env["TRACKIO_PROJECT"] = formula_name
    if "wandb" in names and not environ.get("WANDB_PROJECT"):
        env["WANDB_PROJECT"] = formula_name
    env["FORMULA_TRACKING_DIR"] = str(folder)
    return env


def trainer_args(environ: MutableMapping[str, str] | None = None) -> dict[str, object]:
    """The train step's `report_to` and `run_name` ("none" when the build did not ask for
    tracking). Sets what each tracker reads for this one step in `environ` (the step's own
    process environment by default): its TensorBoard folder, and its key as an MLflow tag so a
    tracked run leads back to the store."""
    if environ is None:
        environ = os.environ
    names = [n for n in environ.get(REPORT_TO_ENV, "").split(",") if n]
    if not names:
        return {"report_to": "none"}
    step, key = environ.get(STEP_ENV, "step"), environ.get(STEP_KEY_ENV, "")
    folder = environ.get("FORMULA_TRACKING_DIR")
    if "tensorboard" in names and folder and not environ.get("TENSORBOARD_LOGGING_DIR"):
        environ["TENSORBOARD_LOGGING_DIR"] = str(Path(folder) / "tensorboard" / f"{step}-{key[:12]}")
    if "mlflow" in names:
        tags = json.loads(environ.get("MLFLOW_TAGS") or "{}")
        environ["MLFLOW_TAGS"] = json.dumps({**tags, "formula.step": step, "formula.step_key": key})
    return {"report_to": names, "run_name": step}

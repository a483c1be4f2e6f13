"""Experiment tracking (`build --report-to`): metrics reach the trackers, keys do not move."""

import json
import os
from pathlib import Path

import pytest

from formula.runtime import tracking
from conftest import copy_example, run_formula


def test_parse_names_and_refuses_unknown_or_missing(monkeypatch):
    assert tracking.parse("none") == ()
    assert tracking.parse("") == ()
    with pytest.raises(tracking.TrackingError, match="no tracker is called `mlfow`"):
        tracking.parse("mlfow")
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(tracking.TrackingError, match=r"`wandb` is not installed here: pip install wandb"):
        tracking.parse("wandb")


def test_build_env_fills_local_defaults_only_where_unset(tmp_path):
    env = tracking.build_env(("tensorboard", "trackio"), tmp_path, "tiny", environ={})
    assert env == {"FORMULA_REPORT_TO": "tensorboard,trackio", "TRACKIO_PROJECT": "tiny",
                   "FORMULA_TRACKING_DIR": str(tmp_path / "tracking")}
    env = tracking.build_env(("mlflow",), tmp_path, "tiny",
                             environ={"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_EXPERIMENT_NAME": "roles"})
    assert "MLFLOW_TRACKING_URI" not in env and env["MLFLOW_EXPERIMENT_NAME"] == "roles"
    assert tracking.build_env((), tmp_path, "tiny") == {}


def test_trainer_args_per_step():
    assert tracking.trainer_args({}) == {"report_to": "none"}
    environ = {"FORMULA_REPORT_TO": "tensorboard,mlflow", "FORMULA_TRACKING_DIR": "/s/tracking",
               "FORMULA_STEP": "train.sft", "FORMULA_STEP_KEY": "abcdef0123456789",
               "MLFLOW_TAGS": '{"team": "gastown"}'}
    assert tracking.trainer_args(environ) == {"report_to": ["tensorboard", "mlflow"], "run_name": "train.sft"}
    assert environ["TENSORBOARD_LOGGING_DIR"] == "/s/tracking/tensorboard/train.sft-abcdef012345"
    assert json.loads(environ["MLFLOW_TAGS"]) == {"team": "gastown", "formula.step": "train.sft",
                                                  "formula.step_key": "abcdef0123456789"}


def test_unknown_tracker_is_a_usage_error(tmp_path):
    project = copy_example(tmp_path / "p")
    r = run_formula(project, tmp_path / "store", "build", "tiny.formula", "--plain", "--report-to", "mlfow",
                    check=False)
    assert r.returncode == 2 and "no tracker is called `mlfow`" in r.stderr
    assert not (tmp_path / "store" / "objects").exists() or not any((tmp_path / "store" / "objects").iterdir())


def test_metrics_reach_tensorboard_and_mlflow_without_changing_keys(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    project, store = copy_example(tmp_path / "p"), tmp_path / "store"
    mlruns = tmp_path / "mlruns"
    # A file store keeps the test self-contained (a team points MLFLOW_TRACKING_URI at its server).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlruns.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    args = ["build", "tiny.formula", "--only", "train.lm", "--plain", "stage.lm.max_steps=3", "stage.lm.log_every=1"]
    run_formula(project, store, *args, "--report-to", "tensorboard,mlflow")

    events = list((store / "tracking" / "tensorboard").glob("train.lm-*/events.out.tfevents.*"))
    assert events, sorted(p.name for p in (store / "tracking").rglob("*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"], acc.Tags()
    assert len(acc.Scalars("train/loss")) >= 3

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlruns.as_uri())
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "train.lm"
    assert run.data.tags["formula.step"] == "train.lm" and len(run.data.tags["formula.step_key"]) >= 32
    assert "loss" in run.data.metrics
    # The step's own metrics are in the store as always.
    out = run_formula(project, store, "show", "tiny:train.lm").stdout
    output = Path(next(l.split()[1] for l in out.splitlines() if l.startswith("output")))
    assert (output / "metrics.jsonl").is_file()

    # Tracking is not part of any key: without it, everything is cached.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    r = run_formula(project, store, "plan", "tiny.formula", "--only", "train.lm", "stage.lm.max_steps=3",
                    "stage.lm.log_every=1")
    assert "will run" not in r.stdout, r.stdout

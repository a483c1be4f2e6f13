"""Training and assembling on the example's tiny model, through `formula build`."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytest.importorskip("trl")


def env_for(store: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FORMULA_STEPS",)}
    env.update(FORMULA_HOME=str(store), NO_COLOR="1")
    return env


def formula(project: Path, store: Path, *args, check=True):
    r = subprocess.run([sys.executable, "-m", "formula.cli", *args], cwd=project, env=env_for(store),
                       capture_output=True, text=True, timeout=900)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def output_of(project: Path, store: Path, step: str, *overrides) -> Path:
    out = formula(project, store, "show", f"tiny:{step}").stdout
    return Path(next(l.split()[1] for l in out.splitlines() if l.startswith("output")))


def run_facts(project: Path, store: Path, step: str) -> dict:
    """The facts of the run that built a step (wall time, resumed): in its action record."""
    out = formula(project, store, "show", f"tiny:{step}").stdout
    key = next(l.split()[1] for l in out.splitlines() if l.startswith("key"))
    return json.loads(next(store.glob(f"actions/*/{key}.json")).read_text())["run"]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    project = tmp / "p"
    project.mkdir()
    for name in ("tiny.formula", "data", "evals"):
        src = ROOT / "examples" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    store = tmp / "store"
    formula(project, store, "build", "tiny.formula", "--only", "assemble.tiny_chat", "--plain", "-j", "2",
            "stage.dpo.log_every=1", "stage.dpo.epochs=4")
    return project, store


def holdout_loss(model_dir: Path, data_dir: Path, outcomes: tuple[str, ...] | None = None,
                 split: str = "holdout") -> float:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ds = datasets.load_from_disk(str(data_dir / split))
    if outcomes is not None:  # the held-out sessions of the kind a stage trains on
        ds = ds.filter(lambda row: row["outcome"] in outcomes)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in ds:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor([row["labels"]])
            out = model(input_ids=ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            total += float(out.loss) * n
            count += n
    return total / count


def test_sft_lowers_the_held_out_loss(example):
    project, store = example
    data = output_of(project, store, "tokenize.sessions.tiny")
    before = holdout_loss(output_of(project, store, "model.tiny"), data)
    after_lm = holdout_loss(output_of(project, store, "train.lm"), data)
    # The sft stage (LoRA) trains on sessions with these outcomes (examples/tiny.formula) after
    # the lm stage has already fitted every session: it must lower the loss on what it trains on
    # and leave the held-out loss where the lm stage put it (within 2%).
    sft_data = ("merged", "patrol", "closed", "no_change")
    lm_fit = holdout_loss(output_of(project, store, "train.lm"), data, sft_data, split="train")
    sft_fit = holdout_loss(output_of(project, store, "train.sft"), data, sft_data, split="train")
    after_sft = holdout_loss(output_of(project, store, "train.sft"), data)
    print(f"held-out loss: base {before:.3f}, after lm {after_lm:.3f}, after sft {after_sft:.3f}; "
          f"on the sft stage's training data: after lm {lm_fit:.3f}, after sft {sft_fit:.3f}")
    assert after_lm < 0.6 * before
    assert sft_fit < lm_fit
    assert after_sft < 1.02 * after_lm


def test_dpo_raises_the_reward_margin(example):
    project, store = example
    rows = [json.loads(l) for l in (output_of(project, store, "train.dpo") / "metrics.jsonl").read_text().splitlines()]
    margins = [r["rewards_margins"] for r in rows if "rewards_margins" in r]
    print(f"DPO reward margins: first {margins[0]:.4f}, last {margins[-1]:.4f} over {len(margins)} logs")
    assert len(margins) >= 4 and margins[-1] > margins[0] and margins[-1] > 0


def test_merged_weights_give_the_logits_of_base_plus_adapter(example):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    project, store = example
    sft = output_of(project, store, "train.sft")
    base = AutoModelForCausalLM.from_pretrained(output_of(project, store, "train.lm"), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, sft / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(sft, dtype=torch.float32).eval()
    ids = torch.randint(0, merged.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (with_adapter(ids).logits - merged(ids).logits).abs().max().item()
    print(f"merged vs base+adapter: max abs logit difference {diff:.2e}")
    assert diff < 1e-4


def test_assembled_model_ships_everything(example):
    project, store = example
    out = output_of(project, store, "assemble.tiny_chat")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
            "generation_config.json", "README.md", "lineage.json"} <= names
    card = (out / "README.md").read_text()
    assert "| lm | sft | full |" in card and "| dpo | dpo | LoRA r=8" in card
    show = formula(project, store, "show", "tiny:train.sft").stdout
    assert "from train.lm" in show and "train_loss" in show


def test_kill_and_resume_continues_from_the_checkpoint(example, tmp_path):
    project, _ = example
    store = tmp_path / "store"
    args = ["build", "tiny.formula", "--only", "train.lm", "--plain", "stage.lm.epochs=8", "stage.lm.save_every=10",
            "stage.lm.log_every=2"]
    formula(project, store, *args[:2], "--only", "tokenize.sessions.tiny")
    proc = subprocess.Popen([sys.executable, "-m", "formula.cli", *args], cwd=project, env=env_for(store),
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((store / "work").glob("*/checkpoints/checkpoint-20")):
        time.sleep(0.2)
    assert list((store / "work").glob("*/checkpoints/checkpoint-20")), "no checkpoint was written in time"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    formula(project, store, *args)
    out = output_of(project, store, "train.lm")
    metrics = json.loads((out / "metrics.json").read_text())
    import math

    import datasets

    rows = len(datasets.load_from_disk(str(output_of(project, store, "tokenize.sessions.tiny") / "train")))
    want = 8 * math.ceil(rows / 8)  # 8 epochs of batches of 8
    assert run_facts(project, store, "train.lm")["resumed"] is True and metrics["steps"] == want
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 1 and steps[-1] == want and all(b > a for a, b in zip(steps, steps[1:])), str(steps)
    assert "clean" in formula(project, store, "verify").stderr


def test_two_processes_over_gloo(example, tmp_path):
    project, _ = example
    store = tmp_path / "store"
    r = formula(project, store, "build", "tiny.formula", "--only", "train.lm", "--plain",
                "stage.lm.processes=2", "stage.lm.max_steps=4")
    out = output_of(project, store, "train.lm")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["processes"] == 2 and metrics["device"] == "cpu"
    assert (out / "model.safetensors").exists()


def test_bad_inputs_fail_before_training_and_leave_nothing(tmp_path, capsys):
    import torch
    from transformers import BertConfig, BertModel

    from formula.runtime.steps import train

    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(bert)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        train.run(train.Config(name="s"), {"model": bert, "data": tmp_path}, out, tmp_path / "w")
    assert "not a causal language model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.run(train.Config(name="s"), {"model": tmp_path / "nowhere", "data": tmp_path}, out, tmp_path / "w")
    assert "is not a model folder" in capsys.readouterr().err
    assert not out.exists()


def test_lora_targets_that_match_nothing(example, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from formula.runtime.steps import train

    project, store = example
    model = AutoModelForCausalLM.from_pretrained(output_of(project, store, "model.tiny"))
    from formula.contract.steps import Lora

    cfg = train.Config(name="sft", adapter=Lora(r=4, alpha=8, dropout=0.0, targets=("query", "value")))
    with pytest.raises(SystemExit):
        train.lora_config(cfg, model)
    err = capsys.readouterr().err
    assert "match no module" in err and "q_proj" in err

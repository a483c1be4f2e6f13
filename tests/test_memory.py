"""The memory estimate (formula/runtime/memory.py): its arithmetic, the precision each setting
resolves to, what `formula plan` prints, and the train step refusing to start when the estimate
exceeds the memory it may use (issue 15, items 1 and 2). The estimate against measured peaks
is bench/memory_estimate."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from formula.compiler.lower import lower
from formula.compiler.pipeline import compile_formula
from formula.runtime import memory as M

from conftest import ROOT, copy_example, run_formula

QWEN_7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
           "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
           "tie_word_embeddings": False}
GiB, MiB = M.GiB, M.MiB


def test_parameters_of_a_real_config():
    shape = M.Shape.from_config(QWEN_7B)
    assert shape.kv == 512 and shape.head_dim == 128 and shape.qkv_bias
    assert 7.60e9 < shape.params() < 7.63e9  # Qwen2.5-7B: 7.61B
    tiny = M.Shape.from_init({"arch": "llama", "hidden": 256, "layers": 2, "heads": 4, "kv_heads": 2,
                              "ffn": 512, "context": 1024}, vocab=1024)
    # embeddings and head 2·1024·256; per layer q,o 256² each, k,v 256·128 each, MLP 3·256·512;
    # norms 5·256
    assert tiny.params() == 2 * 1024 * 256 + 2 * (2 * 256 * 256 + 2 * 256 * 128 + 3 * 256 * 512) + 5 * 256


def test_each_part_of_the_estimate():
    shape = M.Shape.from_init({"arch": "llama", "hidden": 256, "layers": 2, "heads": 4, "kv_heads": 2,
                               "ffn": 512}, vocab=1024)
    P = shape.params()
    full = M.estimate(shape, M.Setup(batch=4, length=128, device="cuda"))
    assert (full.weights, full.gradients, full.optimizer, full.adapter) == (4 * P, 4 * P, 8 * P, 0)
    # activations, per layer and token: frozen base 8h + 2ah + 2a·kv + 3af, full adds 4ah + af,
    # padding adds a·T + a·h; plus the head's 4h + 2ah + 64, for 4 × 128 tokens
    h, kv, f, a, T = 256, 128, 512, 4, 128
    per_layer = 8 * h + 2 * a * h + 2 * a * kv + 3 * a * f + 4 * a * h + a * f + a * T + a * h
    assert full.setup.checkpointing is False
    assert full.activations == 4 * 128 * (2 * per_layer + 4 * h + 2 * a * h + 64)
    ckpt = M.estimate(shape, replace(full.setup, checkpointing=True))
    assert ckpt.activations < full.activations and ckpt.peak < full.peak
    assert ckpt.peak_other == full.peak and full.peak_other == ckpt.peak
    # bf16 weights halve weights, gradients and optimizer state
    half = M.estimate(shape, replace(full.setup, weights="bf16", compute="bf16"))
    assert (half.weights, half.gradients, half.optimizer) == (2 * P, 2 * P, 4 * P)
    # LoRA on q, k, v, o: r·(in + out) per module and layer, trained in f32
    lora = M.estimate(shape, replace(full.setup, adapter="lora", lora_r=8, weights="bf16", compute="bf16"))
    n = 2 * 8 * ((256 + 256) + (256 + 128) * 2 + (256 + 256))
    assert (lora.adapter, lora.gradients, lora.optimizer, lora.weights) == (4 * n, 4 * n, 8 * n, 2 * P)
    # QLoRA: 4-bit linear layers, the rest in the compute dtype; a bf16 adapter
    q = M.estimate(shape, replace(lora.setup, weights="nf4"))
    assert q.weights < lora.weights / 2 and q.adapter == 2 * n
    # twice the tokens (pairs), twice the activations; a full DPO stage holds a reference copy
    dpo = M.estimate(shape, replace(full.setup, sequences=2, reference_copy=True))
    assert dpo.activations == 2 * full.activations and dpo.weights == 2 * full.weights
    # on CPU, two processes hold two peaks; on CUDA each has its own device
    two = M.estimate(shape, replace(full.setup, device="cpu", processes=2))
    assert two.total == 2 * two.peak
    assert M.estimate(shape, replace(full.setup, processes=2)).total == M.estimate(
        shape, replace(full.setup, processes=2)).peak


def test_a_7b_model_on_a_24_gib_gpu():
    """The numbers people know: full bf16 fine-tuning of a 7B needs ~16 bytes a parameter
    before activations (weights, gradients, two moments: 4 × 2 bytes... plus more), LoRA about
    the bf16 weights, QLoRA about a quarter of them."""
    shape = M.Shape.from_config(QWEN_7B)
    setup = M.setup_of({"batch": 4, "adapter": {"type": "full"}}, "cuda", True, 2048)
    full = M.estimate(shape, setup)
    assert setup.weights == "bf16" and setup.checkpointing
    assert 55 * GiB < full.peak < 80 * GiB
    lora = M.estimate(shape, replace(setup, adapter="lora", lora_dropout=0.05))
    assert 15 * GiB < lora.peak < 24 * GiB
    qlora = M.estimate(shape, replace(lora.setup, weights="nf4"))
    assert 5 * GiB < qlora.peak < 12 * GiB
    gpu = M.Device("cuda", "a 24 GiB GPU", 24 * GiB)
    message = M.refusal("sft", full, gpu)
    assert message and "what would fit" in message and "quantize = nf4" in message
    for line in message.splitlines():
        if "~" in line and line.startswith("    "):
            assert line.split("~")[1].strip() != ""
    assert M.refusal("sft", qlora, gpu) is None


def test_precision_resolves_one_way():
    R = M.resolve_precision
    assert R("auto", "auto", "none", True, "cpu", False) == M.Precision("f32", "f32", None)
    assert R("auto", "auto", "none", False, "cuda", True) == M.Precision("bf16", "bf16", "bf16")
    assert R("auto", "auto", "none", True, "cuda", False) == M.Precision("f32", "f16", "f16")
    assert R("auto", "auto", "none", False, "cuda", False) == M.Precision("f16", "f16", "f16")
    assert R("f32", "auto", "none", True, "cuda", True) == M.Precision("f32", "bf16", "bf16")
    assert R("bf16", "auto", "none", False, "cpu", False) == M.Precision("bf16", "bf16", None)
    assert R("f32", "bf16", "none", True, "cpu", False) == M.Precision("f32", "bf16", "bf16")
    assert R("auto", "auto", "nf4", False, "cuda", True) == M.Precision("nf4", "bf16", "bf16")


def test_sizes_and_the_hub_cache(tmp_path, monkeypatch):
    assert M.parse_size("512MiB") == 512 * MiB and M.parse_size("2 GB") == 2 * 10**9
    assert M.parse_size("1073741824") == GiB
    with pytest.raises(ValueError):
        M.parse_size("a lot")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    folder = tmp_path / "models--Qwen--Qwen2.5-7B-Instruct"
    commit = "a" * 40
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / "config.json").write_text(json.dumps(QWEN_7B))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    assert M.cached_hub_file("Qwen/Qwen2.5-7B-Instruct", "main", "config.json") is not None
    assert M.cached_hub_file("Qwen/Qwen2.5-7B-Instruct", commit, "config.json") is not None
    assert M.cached_hub_file("Qwen/Qwen2.5-7B-Instruct", "v2", "config.json") is None
    assert M.cached_hub_file("Qwen/Qwen2.5-0.5B", "main", "config.json") is None


def graph_of(path, *overrides):
    result = compile_formula(str(path), list(overrides))
    assert result.ok, result.diagnostics
    return lower(result.plan)


def test_plan_lines_for_init_hub_and_unknown_models(tmp_path, monkeypatch):
    cpu = M.Device("cpu", "2 cores", 64 * GiB)
    graph = graph_of(ROOT / "examples" / "tiny.formula")
    lines = M.plan_step(graph.steps, "train.lm", lambda step: None, lambda d: cpu).lines()
    assert lines[0].startswith("memory: ~") and "on cpu (2 cores, 64.0 GiB available); fits" in lines[0]
    assert "8 × 512 tokens, with gradient checkpointing" in lines[1]
    # a hub model: unknown until its config.json is in the cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    graph = graph_of(ROOT / "formulas" / "polecat.formula")
    train = next(n for n, s in graph.steps.items() if s.kind == "train")
    lines = M.plan_step(graph.steps, train, lambda step: None, lambda d: cpu).lines()
    assert lines[0].startswith("memory: unknown (Qwen/Qwen2.5-Coder-7B-Instruct@main is not in the Hugging Face cache")
    folder = tmp_path / "models--Qwen--Qwen2.5-Coder-7B-Instruct"
    (folder / "snapshots" / ("b" * 40)).mkdir(parents=True)
    (folder / "snapshots" / ("b" * 40) / "config.json").write_text(json.dumps(QWEN_7B))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("b" * 40)
    gpu = M.Device("cuda", "a 24 GiB GPU", 24 * GiB)
    lines = M.plan_step(graph.steps, train, lambda step: None, lambda d: gpu).lines()
    assert lines[0].startswith("memory: ~") and "GiB" in lines[0] and "(bf16)" in lines[1]


def test_the_estimate_loads_no_ml_library():
    code = ("import sys; import formula.runtime.memory as m; m.probe_device('auto');"
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'transformers', 'numpy'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_plan_prints_memory_under_each_train_step(tmp_path):
    project = copy_example(tmp_path / "p")
    r = run_formula(project, tmp_path / "store", "plan", "tiny.formula")
    rows = r.stdout.splitlines()
    for step in ("train.lm", "train.sft", "train.dpo"):
        at = next(i for i, line in enumerate(rows) if line.split()[2:3] == [step])
        below = rows[at + 1:at + 6]
        assert any("memory: ~" in line and " on cpu " in line for line in below), (step, below)


def formula_env(project, store, *args, env):
    import os

    full = {k: v for k, v in os.environ.items() if k != "FORMULA_STEPS"}
    full.update(FORMULA_HOME=str(store), NO_COLOR="1", **env)
    return subprocess.run([sys.executable, "-m", "formula.cli", *args], cwd=project, env=full,
                          capture_output=True, text=True, timeout=900)


def test_the_train_step_refuses_what_does_not_fit_and_trains_bf16_lora(tmp_path):
    """Refused before anything loads, with what would fit; then bf16 weights train on the CPU
    (a LoRA over a bf16 base: the adapter in f32)."""
    pytest.importorskip("trl")
    project, store = copy_example(tmp_path / "p"), tmp_path / "store"
    env = {"FORMULA_MEMORY_LIMIT": "250MiB"}
    r = formula_env(project, store, "build", "tiny.formula", "--only", "train.lm", "--plain", "-j", "2",
                    "stage.lm.max_steps=2", env=env)
    assert r.returncode != 0
    err = r.stderr
    assert "stage `lm` needs about" in err and "250.0 MiB allowed by FORMULA_MEMORY_LIMIT" in err, err[-3000:]
    assert "what would fit:" in err and "batch = " in err and "Traceback" not in err, err[-3000:]
    assert "train.lm" not in run_formula(project, store, "ls").stdout.split()
    r = run_formula(project, store, "build", "tiny.formula", "--only", "train.sft", "--plain", "-j", "2",
                    "stage.lm.max_steps=2", "stage.sft.max_steps=2", "stage.sft.dtype=bf16")
    out = run_formula(project, store, "show", "tiny:train.sft").stdout
    folder = next(line.split()[1] for line in out.splitlines() if line.startswith("output"))
    from pathlib import Path

    assert json.loads((Path(folder) / "config.json").read_text())["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "adapter" / "adapter_model.safetensors"), "pt") as fh:
        assert {str(fh.get_slice(k).get_dtype()) for k in fh.keys()} == {"F32"}

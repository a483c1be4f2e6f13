"""`sharding = fsdp`: full fine-tunes that do not fit one GPU, sharded by accelerate's FSDP.

accelerate shards across GPUs only (on CPU its processes train with DDP), so on this machine the
checker and the train step refuse it on CPU with a clear message, and the memory preflight is
checked on the figures: sharded over N GPUs, a 7B full fine-tune fits where it did not.
"""

import shutil
from dataclasses import replace

from conftest import ROOT
from formula.compiler.lower import lower
from formula.compiler.pipeline import compile_formula
from formula.runtime import memory as M
from test_memory import QWEN_7B

GiB = M.GiB


def compiled(tmp_path, *overrides):
    for name in ("tiny.formula", "data", "evals"):
        if not (tmp_path / name).exists():
            src = ROOT / "examples" / name
            (tmp_path / name).symlink_to(src) if src.is_dir() else shutil.copy(src, tmp_path / name)
    return compile_formula(str(tmp_path / "tiny.formula"), list(overrides))


def test_a_7b_full_fine_tune_fits_24_gib_gpus_when_sharded_over_8():
    shape = M.Shape.from_config(QWEN_7B)
    setup = M.setup_of({"batch": 1, "adapter": {"type": "full"}, "processes": 8, "sharding": "fsdp"},
                       "cuda", True, 2048)
    assert setup.sharded and setup.processes == 8
    sharded = M.estimate(shape, setup)
    one = M.estimate(shape, replace(setup, sharded=False, processes=1))
    gpu = M.Device("cuda", "a 24 GiB GPU", 24 * GiB)
    assert M.refusal("sft", one, gpu) is not None  # does not fit one device
    assert sharded.optimizer * 8 >= one.optimizer > sharded.optimizer * 7
    assert sharded.peak < 24 * GiB and M.refusal("sft", sharded, gpu) is None
    nodes = M.setup_of({"adapter": {"type": "full"}, "processes": 4, "nodes": 2, "sharding": "fsdp"},
                       "cuda", True, 2048)
    assert (nodes.processes, nodes.nodes) == (4, 2)
    assert M.estimate(shape, nodes).optimizer == M.estimate(shape, replace(nodes, processes=8, nodes=1)).optimizer


def test_fsdp_is_a_training_setting(tmp_path):
    result = compiled(tmp_path, "stage.lm.sharding=fsdp", "stage.lm.processes=2")
    assert result.ok, [d.message for d in result.diagnostics]
    assert lower(result.plan).steps["train.lm"].config["sharding"] == "fsdp"
    plain = compiled(tmp_path)
    assert "sharding" not in lower(plain.plan).steps["train.lm"].config  # old keys stay


def test_fsdp_on_cpu_or_one_process_is_caught_by_check(tmp_path):
    cpu = compiled(tmp_path, "stage.lm.sharding=fsdp", "stage.lm.processes=2", "stage.lm.device=cpu")
    assert [d.code for d in cpu.diagnostics if d.is_error] == ["needs-cuda"]
    one = compiled(tmp_path, "stage.lm.sharding=fsdp")
    assert one.ok and "shards-nothing" in [d.code for d in one.diagnostics]
    lora = compiled(tmp_path, "stage.sft.sharding=fsdp", "stage.sft.processes=2")
    assert [d.code for d in lora.diagnostics if d.is_error] == ["fsdp-needs-full"]


def test_the_train_step_refuses_fsdp_without_cuda(tmp_path, capsys):
    import pytest
    import torch

    from formula.contract.steps import TrainConfig
    from formula.runtime.steps import train

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(SystemExit) as stopped:  # before any process is launched or anything loads
        train.run(TrainConfig(name="lm", sharding="fsdp", processes=2), {}, tmp_path / "out", tmp_path / "work")
    assert stopped.value.code == 3
    assert "stage `lm`: `sharding = fsdp` needs CUDA devices" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

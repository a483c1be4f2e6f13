"""The train step: one stage of a training method (`formula/methods/`: SFT, DPO, ...) with trl, full
weights or a peft LoRA adapter. The method reads the data and builds the trainer; this step loads
the model, checks the template, resumes, saves and records.

The output is a standalone model folder (for LoRA: the adapter in `adapter/` and the weights with
it merged, so a later stage or `assemble` starts from one folder), with `metrics.jsonl` (loss,
learning rate and grad norm per logging step), `metrics.json` (the whole run's mean training loss,
steps, examples), `loss.png`, `lineage.json`. Everything in it is a function of the inputs and
the seed: wall times, tokens per second and whether the run resumed are facts of one run, kept in
the action record (`run_facts`), so a rerun that gives the same weights gives the same output
digest and the steps after it stay cached.

Checkpoints go to the step's work folder every `save_every` steps; a killed run resumes from the
last one, and its figures cover the whole run (the loss sum so far is saved with each checkpoint).
Several processes (`processes = 2`) run under torch's launcher, over gloo on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from formula.contract.config import decode, encode
from formula.contract.steps import Lora, TrainConfig
from formula.methods import METHODS, Method
from formula.runtime import memory, tracking
from formula.runtime.memory import Precision
from formula.runtime.step import fail, run_facts, step_entry

PROCESS_START = time.time()
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "safetensors")


Config = TrainConfig  # the step's configuration: formula/contract/steps.py


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def load_start(path: Path):
    """The starting model's config and tokenizer, checked, before any weight is read."""
    from transformers import AutoConfig, AutoTokenizer

    if not (path / "config.json").is_file():
        fail(f"the starting model {path} is not a model folder (no config.json)")
    config = AutoConfig.from_pretrained(path)
    if not any(a.endswith("ForCausalLM") for a in (config.architectures or [])):
        fail(f"the starting model is a {config.architectures}, not a causal language model")
    tok = AutoTokenizer.from_pretrained(path)
    if len(tok) > config.vocab_size:
        fail(f"the tokenizer has {len(tok)} tokens but the model's vocabulary holds {config.vocab_size}")
    return config, tok


TORCH_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def load_weights(path: Path, cfg: Config, precision: Precision, cuda: bool):
    """The weights in the dtype the stage trains in, with its attention implementation; a 4-bit
    NF4 base (bitsandbytes) for QLoRA, placed on this process's GPU."""
    import torch
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = {"attn_implementation": cfg.attention}
    if precision.weights == "nf4":
        from transformers import BitsAndBytesConfig

        compute = getattr(torch, TORCH_DTYPES[precision.compute])
        kw.update(dtype=compute, device_map={"": int(os.environ.get("LOCAL_RANK", "0"))},
                  quantization_config=BitsAndBytesConfig(
                      load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                      bnb_4bit_use_double_quant=True, bnb_4bit_quant_storage=compute))
    else:
        kw["dtype"] = getattr(torch, TORCH_DTYPES[precision.weights])
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kw)  # never pickle


def require_device(cfg: Config, cuda: bool, bf16_ok: bool, precision: Precision) -> None:
    """What the stage's settings need of this machine, said before anything loads."""
    import importlib.util

    needs = {"quantize = nf4": (precision.weights == "nf4", "bitsandbytes"),
             "attention = flash_attention_2": (cfg.attention == "flash_attention_2", "flash_attn"),
             "liger = true": (cfg.liger, "liger_kernel")}
    for what, (wanted, package) in needs.items():
        if not wanted:
            continue
        if not cuda:
            fail(f"stage `{cfg.name}` sets `{what}`, which needs a CUDA device, and none is visible"
                 + (" (`device = cpu`)" if cfg.device == "cpu" else ""))
        if importlib.util.find_spec(package) is None:
            fail(f"stage `{cfg.name}` sets `{what}`, which needs the {package.replace('_', '-')} package; "
                 f"install it (pip install {package.replace('_', '-')}) or remove the setting")
    if precision.autocast == "f16" and not cuda:
        fail(f"stage `{cfg.name}`: f16 mixed precision (`precision = f16`) needs a CUDA device")
    if "bf16" in (precision.weights, precision.compute, precision.autocast) and cuda and not bf16_ok:
        fail(f"stage `{cfg.name}` trains in bf16, which this GPU does not support: set `dtype = f16` "
             "(with a LoRA adapter) or `dtype = f32` with `precision = f16`")
    if cfg.attention == "flash_attention_2" and precision.compute == "f32":
        fail(f"stage `{cfg.name}`: FlashAttention computes in bf16 or f16 only; set `dtype = bf16`")
    if precision.weights == "f16" and not isinstance(cfg.adapter, Lora):
        fail(f"stage `{cfg.name}`: f16 weights cannot be fine-tuned directly; use `dtype = bf16` or a LoRA adapter")


def check_template(cfg: Config, tok, data: Path) -> str | None:
    """The data was tokenized with one chat template; the model trained on it must carry the
    same one, or it will be served with a template it never saw."""
    from formula.contract.templates import template_hash

    ours = template_hash(tok.chat_template) if tok.chat_template else None
    stats = data / "stats.json"
    if stats.is_file():
        theirs = json.loads(stats.read_text()).get("template_sha256")
        if theirs and ours != theirs:
            fail(f"stage `{cfg.name}`: the chat template of its starting model (sha256 {str(ours)[:12]}) "
                 f"differs from the one its data was tokenized with ({data / 'stats.json'}: "
                 f"sha256 {theirs[:12]})")
    return ours


def lora_config(cfg: Config, model):
    from peft import LoraConfig

    a = cfg.adapter
    assert isinstance(a, Lora)
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if type(m).__name__ in ("Linear", "Conv1D") and "." in n})
    targets = list(a.targets)
    missing = [t for t in targets if t not in linear and t != "all-linear"]
    if missing and len(missing) == len(targets):
        fail(f"stage `{cfg.name}`: LoRA targets {missing} match no module of the model; "
             f"its linear modules are {linear}")
    alpha = a.alpha if a.alpha is not None else 2 * a.r
    return LoraConfig(r=a.r, lora_alpha=alpha, lora_dropout=a.dropout,  # type: ignore[arg-type]  # a float works
                      target_modules=targets, bias=a.bias, use_rslora=a.rslora,  # type: ignore[arg-type]
                      use_dora=a.dora, task_type="CAUSAL_LM")


LOSS_SUM = "formula_loss.json"  # beside each checkpoint: the loss summed over the run so far


class MetricsLog:
    """Appends one JSON line per logging step to the work folder (so a resumed run continues
    the same curve), and throughput (tokens per second since the previous line, a fact of this
    run) to another file there.

    Its callback also makes the run's mean loss cover the whole run when it resumes: every
    checkpoint is a logging step, and the trainer's loss sum at that step is saved beside it; a
    resumed run starts its sum from there (the trainer restarts it at 0), so the sum is added up
    in the same order as an uninterrupted run's and `train_loss` comes out identical."""

    def __init__(self, path: Path):
        from transformers import TrainerCallback

        log = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if control.should_save:
                    control.should_log = True  # the loss sum is whole at every checkpoint
                return control

            def on_train_begin(self, args, state, control, **kw):
                if log.trainer is not None and log.resumed_sum is not None:
                    log.trainer._total_loss_scalar = log.resumed_sum

            def on_log(self, args, state, control, logs=None, **kw):
                if rank() == 0 and logs and "loss" in logs:
                    log.write(state, logs)

            def on_save(self, args, state, control, **kw):
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if rank() == 0 and log.trainer is not None and folder.is_dir():
                    tmp = folder / (LOSS_SUM + ".tmp")
                    tmp.write_text(json.dumps({"step": state.global_step,
                                               "loss_sum": log.trainer._total_loss_scalar}))
                    os.replace(tmp, folder / LOSS_SUM)

        self.path = path
        self.throughput_path = path.with_name("throughput.jsonl")
        self.callback = Callback()
        self.last = (time.time(), 0)
        self.trainer = None
        self.resumed_sum: float | None = None
        self.resumed_step: int | None = None

    def resume_from(self, checkpoint: Path) -> None:
        """Continue the curve and the loss sum of the run that wrote `checkpoint`."""
        step = int(checkpoint.name.split("-")[1])
        self.resumed_sum = float(json.loads((checkpoint / LOSS_SUM).read_text())["loss_sum"])
        self.resumed_step = step
        if rank() != 0:
            return
        for path in (self.path, self.throughput_path):  # steps logged after it are run again
            if path.exists():
                rows = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
                path.write_text("".join(r + "\n" for r in rows))

    def write(self, state, logs: dict) -> None:
        now, tokens = time.time(), int(logs.get("num_input_tokens_seen", state.num_input_tokens_seen or 0))
        then, before = self.last
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "loss": logs.get("loss"),
               "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")}
        for k in ("rewards/margins", "rewards/accuracies"):
            if k in logs:
                row[k.replace("/", "_")] = logs[k]
        self.last = (now, tokens)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if tokens:
            with open(self.throughput_path, "a") as fh:
                fh.write(json.dumps({"step": state.global_step,
                                     "tokens_per_second": round((tokens - before) / max(now - then, 1e-9), 1)}) + "\n")

    def throughput(self) -> list[dict]:
        if not self.throughput_path.exists():
            return []
        return [json.loads(l) for l in self.throughput_path.read_text().splitlines() if l.strip()]


def plot(metrics: str | Path, png: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = Path(metrics)
    rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()] if metrics.exists() else []
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


class PlotHelper:
    """Renders the loss curve in a helper process started with the step, so that importing
    matplotlib (~0.4 s) happens on the other core while torch loads, not after training."""

    CODE = ("import json, sys\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot\n"
            "from formula.runtime.steps.train import plot\nplot(*json.loads(sys.stdin.read()))\n")

    def __init__(self):
        from formula.runtime.step import kill_on_parent_death

        self.proc = subprocess.Popen([sys.executable, "-c", self.CODE], stdin=subprocess.PIPE, text=True,
                                     preexec_fn=kill_on_parent_death)

    def render(self, metrics: Path, png: Path, title: str) -> None:
        self.proc.communicate(json.dumps([str(metrics), str(png), title]))
        if self.proc.returncode != 0 or not png.is_file():
            fail(f"the loss curve could not be drawn (helper exit status {self.proc.returncode})")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Run:
    """What a method is handed to read its data and build its trainer (`formula.methods.TrainRun`)."""

    config: TrainConfig
    options: Any
    data_dir: Path
    work: Path
    cuda: bool
    precision: Precision
    model: Any = None
    tokenizer: Any = None
    peft_config: Any = None
    callbacks: list[Any] = field(default_factory=list)

    def args(self, config_class: type, **method_args: Any) -> Any:
        """trl's config for the trainer: the stage's shared settings, and the method's own."""
        cfg, work, cuda = self.config, self.work, self.cuda
        kw = dict(output_dir=str(work / "checkpoints"), num_train_epochs=cfg.epochs,
                  max_steps=cfg.max_steps or -1, learning_rate=cfg.lr, per_device_train_batch_size=cfg.batch,
                  gradient_accumulation_steps=cfg.accumulate, seed=cfg.seed, data_seed=cfg.seed,
                  warmup_steps=cfg.warmup, lr_scheduler_type=cfg.scheduler, weight_decay=cfg.weight_decay,
                  max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.log_every, logging_first_step=True,
                  save_strategy="steps",
                  save_steps=cfg.save_every, save_total_limit=2, use_cpu=not cuda,
                  bf16=self.precision.autocast == "bf16", fp16=self.precision.autocast == "f16",
                  gradient_checkpointing=cfg.gradient_checkpointing,
                  dataloader_num_workers=0, include_num_input_tokens_seen="all",
                  ddp_backend=("gloo" if not cuda and "WORLD_SIZE" in os.environ else None),
                  disable_tqdm=False, max_length=cfg.max_len)
        if cfg.liger:
            kw["use_liger_kernel"] = True
        if cfg.sharding == "fsdp":  # accelerate's FSDP plugin (FSDP2), through the trainer
            kw["fsdp"] = True
            kw["fsdp_config"] = {"version": 2, "reshard_after_forward": True,
                                 "state_dict_type": "FULL_STATE_DICT",
                                 # FSDP's own checkpointing: the trainer's would all-gather twice
                                 "activation_checkpointing": cfg.gradient_checkpointing}
            kw["gradient_checkpointing"] = False
        kw.update(tracking.trainer_args())  # report_to: "none" unless the build asked
        return config_class(**{**kw, **method_args})

    def fail(self, message: str) -> NoReturn:
        fail(message)

    def read_jsonl(self, name: str) -> list[dict]:
        path = self.data_dir / name
        if not path.is_file():
            fail(f"stage `{self.config.name}`: its data has no {name} (built by an older formula? "
                 "rebuild the data step)")
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def method_of(cfg: TrainConfig) -> tuple[Method, Any]:
    method = METHODS.get(cfg.method)
    if method is None:
        fail(f"stage `{cfg.name}`: no training method is called {cfg.method!r} (known: {', '.join(METHODS)})")
    return method, cfg.options if cfg.options is not None else method.Options()


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    if cfg.sharding == "fsdp":  # said once, before any process starts
        import torch

        if not (torch.cuda.is_available() and cfg.device in ("auto", "cuda")):
            fail(f"stage `{cfg.name}`: `sharding = fsdp` needs CUDA devices (accelerate shards a model "
                 "across GPUs only); on CPU, remove it: `processes` trains with DDP")
    if (cfg.processes > 1 or cfg.nodes > 1) and "WORLD_SIZE" not in os.environ:
        return launch(cfg)
    plotter = PlotHelper() if rank() == 0 else None
    try:
        train_stage(cfg, inputs, output, work, plotter)
    finally:
        if plotter is not None:
            plotter.close()


def train_stage(cfg: Config, inputs: dict[str, Path], output: Path, work: Path, plotter) -> None:
    import torch

    cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    if cfg.device == "cuda" and not cuda:
        fail(f"stage `{cfg.name}` asks for `device = cuda`, but no CUDA device is visible")
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    lora = isinstance(cfg.adapter, Lora)
    precision = memory.resolve_precision(cfg.dtype, cfg.precision, cfg.quantize, not lora,
                                         "cuda" if cuda else "cpu", bf16_ok)
    require_device(cfg, cuda, bf16_ok, precision)
    start = Path(inputs["model"])
    _, tok = load_start(start)
    template_sha = check_template(cfg, tok, Path(inputs["data"]))
    method, options = method_of(cfg)
    stage = Run(cfg, options, Path(inputs["data"]), work, cuda, precision, tokenizer=tok)
    data = method.dataset(stage)
    import peft  # noqa: F401  (loaded before the base of the memory figures is taken, like
    import trl  # noqa: F401   every other library the step uses: they are not the stage's)

    peak = PeakMemory(cuda)
    planned = preflight(cfg, start, data, tok, cuda, bf16_ok, method)
    model = load_weights(start, cfg, precision, cuda)
    stage.model = model
    stage.peft_config = lora_config(cfg, model) if lora else None
    peft_config = stage.peft_config
    log = MetricsLog(work / "metrics.jsonl")
    checkpoints = work / "checkpoints"
    if rank() == 0:
        # A checkpoint is whole once the trainer wrote its state and we wrote the loss sum, in
        # that order; a kill mid-save leaves one without them, which must not be resumed from.
        for partial in checkpoints.glob("checkpoint-*"):
            if not (partial / "trainer_state.json").is_file() or not (partial / LOSS_SUM).is_file():
                shutil.rmtree(partial, ignore_errors=True)
    resume = checkpoints.is_dir() and any(checkpoints.glob("checkpoint-*"))
    if resume:
        log.resume_from(max(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])))
    stage.callbacks = [log.callback]
    trainer = method.trainer(stage, data)
    log.trainer = trainer
    started = time.time()
    print(f"[formula] ready to train {started - PROCESS_START:.2f}s after the process started; {torch.get_num_threads()} threads", file=sys.stderr)
    loaded, resident = peak.since_start(), peak.now()
    peak.restart()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    measured = peak.since_start()
    run_facts(memory={"estimate": planned.total if planned else None, "measured_peak": measured,
                      "measured_load_peak": loaded, "resident_before_training": resident,
                      "device": "cuda" if cuda else "cpu",
                      "parts": planned.parts() if planned else None})
    # The trainer's own `training_loss` averages only the steps of this call; the sum (resumed
    # from the checkpoint) over every step of the run gives the whole run's mean.
    train_loss = trainer._total_loss_scalar / max(result.global_step, 1)
    # Sharded weights are gathered by every process (a collective), then rank 0 saves them.
    state = trainer.accelerator.get_state_dict(trainer.model) if cfg.sharding == "fsdp" else None
    if rank() != 0:
        return
    if state is not None:
        print(f"[formula] trained sharded: {type(trainer.model_wrapped).__name__} across "
              f"{trainer.accelerator.num_processes} processes", file=sys.stderr)
    print(f"[formula] trained in {time.time() - started:.2f}s", file=sys.stderr)
    trained = trainer.accelerator.unwrap_model(trainer.model) if state is not None else trainer.model
    if peft_config is not None:
        trained.save_pretrained(output / "adapter")
        if precision.weights == "nf4":
            trained = merge_on_unquantized(start, output / "adapter", precision, trainer)
        else:
            trained = trained.merge_and_unload()
    trained.save_pretrained(output, safe_serialization=True,
                            **({"state_dict": state} if state is not None and peft_config is None else {}))
    tok.save_pretrained(output)
    for name in ("generation_config.json",):
        src = Path(inputs["model"]) / name
        if src.exists():
            shutil.copy(src, output / name)
    if (work / "metrics.jsonl").exists():
        shutil.copy(work / "metrics.jsonl", output / "metrics.jsonl")
    else:
        (output / "metrics.jsonl").write_text("")
    plotter.render(output / "metrics.jsonl", output / "loss.png", f"{cfg.method} stage `{cfg.name}`")
    start_lineage = Path(inputs["model"]) / "lineage.json"
    (output / "lineage.json").write_text(json.dumps({
        "stage": cfg.name, "method": cfg.method, "adapter": encode(cfg.adapter), "data": encode(cfg.data),
        "starts_from": json.loads(start_lineage.read_text()) if start_lineage.exists() else cfg.base_model,
    }, indent=1, sort_keys=True))
    print(f"[formula] saved and plotted {time.time() - started:.2f}s after training started", file=sys.stderr)
    (output / "metrics.json").write_text(json.dumps({
        "train_loss": round(train_loss, 5), "steps": result.global_step,
        "processes": int(os.environ.get("WORLD_SIZE", "1")), "device": "cuda" if cuda else "cpu",
        "template_sha256": template_sha,
        "examples": len(data)}, sort_keys=True))
    throughput = log.throughput()
    rates = [r["tokens_per_second"] for r in throughput if r.get("tokens_per_second")]
    run_facts(seconds=round(time.time() - started, 2), resumed=resume, resumed_from_step=log.resumed_step,
              tokens_per_second=round(sum(rates) / len(rates), 1) if rates else None,
              throughput=throughput)


def merge_on_unquantized(start: Path, adapter: Path, precision: Precision, trainer):
    """A QLoRA adapter merged into the base in its compute dtype: the trained 4-bit model is
    dropped, the base is read again unquantized, and the saved adapter applied to it (merging
    into 4-bit weights would store 4-bit weights that later steps cannot read)."""
    import gc

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trainer.model = None
    gc.collect()
    torch.cuda.empty_cache()
    base = AutoModelForCausalLM.from_pretrained(start, dtype=getattr(torch, TORCH_DTYPES[precision.compute]),
                                                use_safetensors=True)
    return PeftModel.from_pretrained(base, adapter).merge_and_unload()


class PeakMemory:
    """The step's own peak memory since it was made: on CUDA the allocator's peak; on CPU the
    resident set's high-water mark, less what was resident then. `restart` starts the mark
    again (after loading, whose transient peak is of file pages the kernel can drop) from the
    same base."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        if cuda:
            import torch

            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._status("VmRSS") or 0
        self.restart()

    def restart(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again here
        except OSError:
            pass

    def now(self) -> int | None:
        """What the step holds now, beyond the base."""
        if self.cuda:
            import torch

            return int(torch.cuda.memory_allocated() - self.base)
        rss = self._status("VmRSS")
        return None if rss is None else rss - self.base

    def since_start(self) -> int | None:
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated() - self.base)
        hwm = self._status("VmHWM")
        return None if hwm is None else hwm - self.base

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None


def longest(data: Any, tok, cap: int | None) -> int:
    """The longest sequence the trainer will see: tokenized rows are measured; message rows
    (preference pairs, labeled sessions) are rendered with the chat template, the prompt with
    each of its continuations."""
    columns = getattr(data, "column_names", None) or []
    if "input_ids" in columns:
        n = max((len(x) for x in data["input_ids"]), default=1)
    else:
        n = 1
        rows = data.to_list() if hasattr(data, "to_list") else list(data)
        for row in rows:
            prompt = row.get("prompt") or []
            for key, value in row.items():
                if key == "prompt" or not isinstance(value, list) or not value or not isinstance(value[0], dict):
                    continue
                try:
                    ids = tok.apply_chat_template(list(prompt) + list(value), tokenize=True)
                except Exception:
                    continue
                ids = ids["input_ids"] if isinstance(ids, dict) else ids
                n = max(n, len(ids))
    return min(n, cap) if cap else n


def preflight(cfg: Config, start: Path, data: Any, tok, cuda: bool, bf16_ok: bool, method: Method):
    """The stage's memory estimate for its real data; the step ends here, before loading any
    weight, when it exceeds what the device has (or FORMULA_MEMORY_LIMIT allows)."""
    try:
        shape = memory.Shape.from_config(json.loads((start / "config.json").read_text()))
    except ValueError as exc:
        print(f"[formula] no memory estimate: {exc}", file=sys.stderr)
        return None
    options = cfg.options if cfg.options is not None else method.Options()
    packed = bool(getattr(options, "packing", False))
    length = longest(data, tok, cfg.max_len)
    setup = memory.setup_of(encode(cfg), "cuda" if cuda else "cpu", bf16_ok, length, padded=not packed,
                            sequences=2 if method.data.name == "pairs" else 1)
    if packed:
        setup = dataclasses.replace(setup, batch=1, length=setup.batch * length)
    est = memory.estimate(shape, setup)
    if cuda:
        import torch

        free = torch.cuda.mem_get_info()[0]
        limit = memory.memory_limit()
        device = memory.Device("cuda", torch.cuda.get_device_name(), limit if limit is not None else free,
                               bf16=bf16_ok, limited=limit is not None)
    else:
        device = memory.cpu_device()
    message = memory.refusal(cfg.name, est, device) if rank() == 0 or cuda else None
    if not message:
        print(f"[formula] memory: {est.summary()} on {device.describe()}: {est.parts()}", file=sys.stderr)
    if message and os.environ.get(memory.MEMORY_CHECK_ENV, "").lower() not in ("off", "0", "false", "no"):
        fail(message)
    if message:
        print(f"[formula] {memory.MEMORY_CHECK_ENV}=off: training although {message.splitlines()[0]}",
              file=sys.stderr)
    return est


def launch(cfg: Config) -> None:
    """Run this step again under torch's launcher, `processes` per node; on several nodes, each
    node's launcher meets the others at the rendezvous its environment names."""
    from formula.runtime.launch import LaunchError, torchrun_args
    from formula.runtime.step import PARENT_ENV, kill_on_parent_death

    try:
        options = torchrun_args(cfg.nodes, cfg.processes, os.environ)
    except LaunchError as exc:
        fail(f"stage `{cfg.name}`: {exc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", *options,
           "-m", "formula.runtime.steps.train", *sys.argv[1:]]
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}  # workers' parent is the launcher
    # The launcher dies with this step, and its workers with it (they run the step harness).
    status = subprocess.call(cmd, env=env, preexec_fn=kill_on_parent_death)
    if status != 0:
        fail(f"stage `{cfg.name}`: a training process failed (exit status {status})")


def _entry(config: dict, inputs: dict[str, Path], output: Path, work: Path) -> None:
    """The configuration the build wrote, read with the options class of its method."""
    method = METHODS.get(config.get("method", ""))
    if method is None:
        fail(f"stage `{config.get('name')}`: no training method is called {config.get('method')!r} "
             f"(known: {', '.join(METHODS)})")
    run(decode(Config, config, options=method.Options), inputs, output, work)


main = step_entry(None, _entry)

if __name__ == "__main__":
    main()

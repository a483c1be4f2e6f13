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
from formula.runtime.step import fail, run_facts, step_entry

PROCESS_START = time.time()
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "safetensors")


Config = TrainConfig  # the step's configuration: formula/contract/steps.py


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def load_model(path: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        fail(f"the starting model {path} is not a model folder (no config.json)")
    config = AutoConfig.from_pretrained(path)
    if not any(a.endswith("ForCausalLM") for a in (config.architectures or [])):
        fail(f"the starting model is a {config.architectures}, not a causal language model")
    tok = AutoTokenizer.from_pretrained(path)
    if len(tok) > config.vocab_size:
        fail(f"the tokenizer has {len(tok)} tokens but the model's vocabulary holds {config.vocab_size}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)  # never pickle
    return model, tok


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
    bf16: bool
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
                  save_steps=cfg.save_every, save_total_limit=2, report_to="none", use_cpu=not cuda,
                  bf16=self.bf16, dataloader_num_workers=0, include_num_input_tokens_seen="all",
                  ddp_backend=("gloo" if not cuda and "WORLD_SIZE" in os.environ else None),
                  disable_tqdm=False, max_length=cfg.max_len)
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
    if cfg.processes > 1 and "WORLD_SIZE" not in os.environ:
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
    bf16 = cuda and torch.cuda.is_bf16_supported() and cfg.precision in ("auto", "bf16")
    model, tok = load_model(Path(inputs["model"]))
    template_sha = check_template(cfg, tok, Path(inputs["data"]))
    method, options = method_of(cfg)
    stage = Run(cfg, options, Path(inputs["data"]), work, cuda, bf16, model=model, tokenizer=tok,
                peft_config=lora_config(cfg, model) if isinstance(cfg.adapter, Lora) else None)
    peft_config = stage.peft_config
    data = method.dataset(stage)
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
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    # The trainer's own `training_loss` averages only the steps of this call; the sum (resumed
    # from the checkpoint) over every step of the run gives the whole run's mean.
    train_loss = trainer._total_loss_scalar / max(result.global_step, 1)
    if rank() != 0:
        return
    print(f"[formula] trained in {time.time() - started:.2f}s", file=sys.stderr)
    trained = trainer.model
    if peft_config is not None:
        trained.save_pretrained(output / "adapter")
        trained = trained.merge_and_unload()
    trained.save_pretrained(output, safe_serialization=True)
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


def launch(cfg: Config) -> None:
    """Run this step again under torch's launcher, one process per `processes`."""
    from formula.runtime.step import PARENT_ENV, kill_on_parent_death

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={cfg.processes}", "-m", "formula.runtime.steps.train", *sys.argv[1:]]
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

"""The eval step: metrics on built models and the gates a formula puts on them.

A model folder (safetensors) is measured with transformers; an exported file the way its
format's runtime module says (a GGUF with llama.cpp, generating through the chat template
embedded in the file, as it will be served: `formula/runtime/formats/gguf.py`). Both measure the same
token ids (the tokenize step's), so their perplexities compare. Failed gates do not fail the
step: its report is an artifact like any other and is cached; the build reads `checks.json` and
exits non-zero while any gate fails, naming it and by how much.

`next_action` answers every assistant turn of a corpus's sessions (formula/runtime/nextaction.py
scores them; the engines are `HFModel.next_actions` and `formula/runtime/export/llama.py`).
Every measurement keeps per-session sums for the bootstrap (formula/runtime/bootstrap.py): its
figures get intervals, and a `significant(...)` check is tested on paired resamples.
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import time
from pathlib import Path
from typing import Any

# OpenMP threads (llama.cpp's and torch's) sleep between parallel regions instead of spinning:
# a spinning pool on cores that other work (another step of the build) also uses runs ~7x slower
# (bench/next_action). Read once, when the OpenMP runtime loads, which is after this line.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from formula.contract.conditions import from_json, matches
from formula.contract.steps import EvalConfig
from formula.contract.templates import template_error, template_hash
from formula.formats import FORMATS
from formula.runtime import formats as runtime_formats
from formula.runtime.step import fail, step_entry
from formula.runtime.steps import typed

LIBRARIES = ("torch", "transformers", "llama_cpp_python", "datasets", "jsonschema", "numpy")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
       "==": operator.eq, "!=": operator.ne}
MAX_GENERATIONS = 256  # prompts per generating metric: enough for a rate, bounded in time


Config = EvalConfig  # the step's configuration: formula/contract/steps.py


class HFModel:
    """A model folder, measured with transformers."""

    def __init__(self, folder: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()
        self.context = getattr(self.model.config, "max_position_embeddings", 2048)

    def nll(self, ids: list[int], labels: list[int]) -> tuple[float, int]:
        torch = self.torch
        ids, labels = ids[: self.context], labels[: self.context]
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        keep = target != -100
        logp = torch.log_softmax(logits[keep], -1).gather(1, target[keep, None])
        return float(-logp.sum()), int(keep.sum())

    def chat(self, messages: list[dict], max_new_tokens: int) -> tuple[str, bool]:
        torch = self.torch
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)[-(self.context - max_new_tokens):]
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.eos_token_id)
        new = out[0, len(ids):].tolist()
        stopped = bool(new) and new[-1] == self.tok.eos_token_id
        return str(self.tok.decode(new, skip_special_tokens=True)), bool(stopped)

    def _ids(self, messages: list[dict], generation_prompt: bool) -> list[int]:
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=generation_prompt,
                                           tokenize=True, return_dict=False)
        return list(ids["input_ids"] if isinstance(ids, dict) else ids)

    def next_actions(self, turns: list, max_new_tokens: int, batch_size: int = 8) -> tuple[list, dict]:
        """Greedy answers to every turn's conversation so far, `batch_size` prompts of similar
        length at a time (left-padded), each cut at its turn's budget (nextaction.budget)."""
        from formula.runtime.nextaction import budget

        torch = self.torch
        prompts, budgets = [], []
        for t in turns:
            ids = self._ids(t.prompt, True)
            whole = self._ids(t.prompt + [t.reference], False)
            b = budget(max(1, len(whole) - len(ids)), max_new_tokens)
            b = max(1, min(b, self.context - 1))
            prompts.append(ids[-(self.context - b):])
            budgets.append(b)
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        pad = eos if pad is None else pad
        out: list = [None] * len(turns)
        generated = 0
        order = sorted(range(len(turns)), key=lambda k: len(prompts[k]))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(prompts[k]) for k in chunk)
            ids = torch.tensor([[pad] * (width - len(prompts[k])) + prompts[k] for k in chunk])
            mask = torch.tensor([[0] * (width - len(prompts[k])) + [1] * len(prompts[k]) for k in chunk])
            with torch.no_grad():
                gen = self.model.generate(ids, attention_mask=mask, max_new_tokens=max(budgets[k] for k in chunk),
                                          do_sample=False, eos_token_id=eos, pad_token_id=pad)
            for row, k in zip(gen[:, width:].tolist(), chunk):
                row = row[:budgets[k]]
                ended = eos in row
                row = row[:row.index(eos)] if ended else row
                generated += len(row) + ended
                out[k] = (str(self.tok.decode(row, skip_special_tokens=True)), ended)
        return out, {"prompt_tokens": sum(map(len, prompts)), "evaluated_tokens": sum(map(len, prompts)),
                     "reused_tokens": 0, "generated_tokens": generated, "batch": batch_size}

    def close(self) -> None:
        pass


def open_model(path: Path):
    """A model folder, or an export format's file (measured the way its runtime module says)."""
    for fmt in FORMATS.values():
        if (path / fmt.file).is_file():
            return runtime_formats.module(fmt.name).open_model(path / fmt.file)
    if (path / "config.json").is_file():
        return HFModel(path)
    fail(f"{path} holds neither a model folder nor an exported model "
         f"({', '.join(f.file for f in FORMATS.values())})")


def rows(data: Path, split: str, where: dict | None) -> list[dict]:
    import datasets

    datasets.disable_caching()  # the data folder is a stored input: nothing may be written into it
    ds = datasets.load_from_disk(str(data / split))
    condition = from_json(where)
    return [r for r in ds if matches(condition, {"role": r.get("role") or None,
                                              "outcome": r.get("outcome") or None,
                                              "bead": r.get("bead") or None})]


def with_intervals(r: dict, units: list[str], stats: dict[str, tuple], transform: str = "ratio") -> dict:
    """A measurement with what the bootstrap needs (`_resample`: per unit, a sum and a count for
    each figure; kept out of eval.json) and a 95% interval for each figure (`ci`)."""
    from formula.runtime import bootstrap

    r["_resample"] = {"units": units, "stats": stats, "transform": transform}
    r["ci"] = {f: bootstrap.figure_interval(units, sums, counts, transform) for f, (sums, counts) in stats.items()}
    return r


def perplexity(model, examples: list[dict]) -> dict:
    total, count = 0.0, 0
    losses, counts = [], []
    for r in examples:
        loss, n = model.nll(list(r["input_ids"]), list(r["labels"]))
        total, count = total + loss, count + n
        losses.append(loss)
        counts.append(n)
    if not count:
        fail("perplexity: the data has no assistant tokens to measure")
    return with_intervals({"value": math.exp(total / count), "tokens": count, "examples": len(examples)},
                          [str(r.get("id") or i) for i, r in enumerate(examples)],
                          {"value": (losses, counts)}, "exp")


def eos_rate(model, examples: list[dict], max_new_tokens: int) -> dict:
    prompts = [(str(r.get("id") or i), json.loads(r["prompt"])) for i, r in enumerate(examples)
               if r.get("prompt")][:MAX_GENERATIONS]
    prompts = [(i, p) for i, p in prompts if p]
    if not prompts:
        fail("eos_rate: the data has no prompts (sessions that open with a user turn)")
    each = [float(model.chat(p, max_new_tokens)[1]) for _, p in prompts]
    stopped = int(sum(each))
    return with_intervals({"value": stopped / len(prompts), "stopped": stopped, "prompts": len(prompts),
                           "max_new_tokens": max_new_tokens},
                          [i for i, _ in prompts], {"value": (each, [1.0] * len(each))})


def sessions(data: Path, split: str, where: dict | None) -> list[dict]:
    """A corpus split's sessions (`train.jsonl`, `holdout.jsonl`) whose metadata match `where`."""
    path = data / f"{split}.jsonl"
    if not path.is_file():
        fail(f"{path} is missing: next_action measures a corpus's sessions")
    condition = from_json(where)
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                s = json.loads(line)
                if matches(condition, s.get("meta") or {}):
                    out.append(s)
    return out


def next_action(model, data: list[dict], max_new_tokens: int, max_turns: int) -> dict:
    """Next-action figures over every assistant turn of the sessions (formula/runtime/nextaction.py),
    per role and per outcome, each with its interval; `results` holds every turn."""
    from formula.runtime import nextaction as na

    turns = na.turns(data, max_turns)
    if not turns:
        fail("next_action: the data has no assistant turn after a first message")
    start = time.perf_counter()
    outputs, stats = model.next_actions(turns, max_new_tokens)
    seconds = time.perf_counter() - start
    scored, records = [], []
    for t, (text, ended) in zip(turns, outputs):
        ref, out = na.reference_action(t.reference), na.parse_output(text, ended)
        s = na.score(ref, out)
        scored.append((t, s))
        records.append({"session": t.session, "turn": t.index, "role": t.role, "outcome": t.outcome,
                        "reference": na.render(ref), "output": text, "ended": ended,
                        "reference_kind": ref.kind, "output_kind": out.kind, **s})
    r = summarize(scored)
    r.update(max_new_tokens=max_new_tokens, max_turns=max_turns, seconds=round(seconds, 3),
             tokens_per_second=round((stats["prompt_tokens"] + stats["generated_tokens"]) / seconds, 1)
             if seconds else None,
             turns_per_second=round(len(turns) / seconds, 2) if seconds else None, **stats)
    for key in ("role", "outcome"):
        groups: dict[str, list] = {}
        for t, s in scored:
            groups.setdefault(str(getattr(t, key) or "(none)"), []).append((t, s))
        r[f"by_{key}"] = {g: {k: v for k, v in summarize(part).items() if not k.startswith("_")}
                          for g, part in sorted(groups.items())}
    r["results"] = records
    return r


def summarize(scored: list) -> dict:
    """The figures of scored turns, with intervals over their sessions."""
    from formula.runtime import nextaction as na

    t = na.tally(scored)
    r: dict[str, Any] = {f: na.value(*t["stats"][f]) for f in na.FIGURES}
    r.update(turns=len(scored), sessions=len(t["units"]),
             call_turns=int(sum(t["stats"]["tool_accuracy"][1])),
             reply_turns=int(sum(t["stats"]["text_similarity"][1])))
    return with_intervals(r, t["units"], t["stats"])


def score(scorer: str, output: str, case: dict) -> bool:
    expect = case.get("expect")
    if scorer == "exact":
        return output.strip() == str(expect).strip()
    if scorer == "contains":
        return str(expect) in output
    if scorer == "regex":
        return re.search(str(expect), output) is not None
    if scorer == "json_schema":
        import jsonschema

        try:
            jsonschema.validate(json.loads(output.strip()), case.get("schema") or {})
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    if scorer == "tool_call":
        # The templates' convention, <tool_call>\n{"name", "arguments"}\n</tool_call>; the
        # case's `tool`, when given, names the tool it must call.
        m = re.search(r"<tool_call>\s*(.*?)\s*</tool_call>", output, re.S)
        try:
            call = json.loads(m.group(1)) if m else None
        except ValueError:
            return False
        return (isinstance(call, dict) and isinstance(call.get("name"), str)
                and isinstance(call.get("arguments"), dict)
                and case.get("tool") in (None, call["name"]))
    raise ValueError(scorer)


def prompt_suite(model, path: Path, scorer: str, max_new_tokens: int) -> dict:
    cases = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{path}:{n}: not JSON ({e.msg}); each line is {{\"prompt\": ..., \"expect\": ...}}")
        if not isinstance(case, dict) or not ("prompt" in case or "messages" in case):
            fail(f"{path}:{n}: a case needs `prompt` (text) or `messages` (a chat)")
        if scorer != "tool_call" and "expect" not in case and scorer != "json_schema":
            fail(f"{path}:{n}: scorer `{scorer}` needs `expect`")
        cases.append(case)
    if not cases:
        fail(f"{path}: no prompts")
    results = []
    for case in cases:
        messages = case.get("messages") or [{"role": "user", "content": case["prompt"]}]
        output, _ = model.chat(messages, max_new_tokens)
        results.append({"prompt": case.get("prompt") or messages[-1]["content"], "output": output,
                        "passed": score(scorer, output, case)})
    passed = sum(r["passed"] for r in results)
    each = ([float(r["passed"]) for r in results], [1.0] * len(results))
    return with_intervals({"value": passed / len(results), "pass_rate": passed / len(results), "passed": passed,
                           "cases": len(results), "scorer": scorer, "results": results},
                          [f"case {i}" for i in range(len(results))], {"value": each, "pass_rate": each})


class Evaluator:
    """Each distinct measurement once, models opened once each."""

    def __init__(self, inputs: dict[str, Path]):
        self.inputs = inputs
        self.models: dict[str, Any] = {}
        self.results: dict[str, dict] = {}

    def model(self, name: str):
        if name not in self.models:
            self.models[name] = open_model(Path(self.inputs[name]))
        return self.models[name]

    def measure(self, m: dict) -> tuple[str, dict]:
        label = describe(m)
        if label not in self.results:
            args = m.get("args", {})
            if m["metric"] == "lm_eval":  # the harness opens the folder itself
                self.results[label] = {"metric": "lm_eval", "model": m["model"], **lm_eval(self.inputs, m)}
                return label, self.results[label]
            model = self.model(m["model"])
            try:
                if m["metric"] == "perplexity":
                    r = perplexity(model, rows(Path(self.inputs[m["data"]]), m["split"], m.get("where")))
                elif m["metric"] == "eos_rate":
                    r = eos_rate(model, rows(Path(self.inputs[m["data"]]), m["split"], m.get("where")),
                                 int(args.get("max_new_tokens", 64)))
                elif m["metric"] == "next_action":
                    r = next_action(model, sessions(Path(self.inputs[m["data"]]), m["split"], m.get("where")),
                                    int(args.get("max_new_tokens", 256)), int(args.get("max_turns", 1000)))
                else:
                    r = prompt_suite(model, Path(self.inputs[m["suite"]]), args.get("scorer", "contains"),
                                     int(args.get("max_new_tokens", 128)))
            except Exception as exc:  # a chat template that fails as it renders a prompt: one line
                what = template_error(exc)
                if what is None:
                    raise
                folder = Path(self.inputs[m["model"]])
                where = ("chat_template.jinja in the model folder" if (folder / "config.json").is_file()
                         else "the template embedded in the exported file")
                fail(f"{label}: the chat template of the model it measures ({where}) fails: {what}")
            self.results[label] = {"metric": m["metric"], "model": m["model"], "data": m.get("data"),
                                   "split": m.get("split"), "where": m.get("where"), **r}
        return label, self.results[label]

    def value(self, expr: dict) -> float:
        if "const" in expr:
            return float(expr["const"])
        if "op" in expr:
            a, b = self.value(expr["left"]), self.value(expr["right"])
            return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else math.inf}[expr["op"]]
        label, r = self.measure(expr)
        if expr.get("attr") and expr["attr"] not in r:
            fail(f"{label}: the task reports no `{expr['attr']}`; it reports "
                 + ", ".join(f"`{f}`" for f in r.get("figures", ())))
        v = r[expr["attr"]] if expr.get("attr") else r["value"]
        return math.nan if v is None else float(v)

    def leaves(self, expr: dict) -> list[dict]:
        if "const" in expr:
            return []
        if "op" in expr:
            return self.leaves(expr["left"]) + self.leaves(expr["right"])
        return [expr]

    def replicates(self, expr: dict, resampler):
        """The expression in each bootstrap replicate (a float for a constant; None when a
        measurement in it cannot be resampled)."""
        import numpy as np

        if "const" in expr:
            return float(expr["const"])
        if "op" in expr:
            a, b = self.replicates(expr["left"], resampler), self.replicates(expr["right"], resampler)
            if a is None or b is None:
                return None
            with np.errstate(divide="ignore", invalid="ignore"):
                return {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[expr["op"]](a, b)
        _, r = self.measure(expr)
        res = r.get("_resample")
        figure = expr.get("attr") or "value"
        if res is None or figure not in res["stats"]:
            return None
        sums, counts = res["stats"][figure]
        return resampler.figure(res["units"], sums, counts, res["transform"])

    def gate(self, g: dict) -> dict:
        """One check: both sides, their intervals over the same (paired) resamples, and, when the
        check asks for it, whether the comparison holds in all but 1 - confidence of them."""
        import numpy as np

        from formula.runtime import bootstrap

        left, right = self.value(g["left"]), self.value(g["right"])
        passed = bool(OPS[g["op"]](left, right))
        want = g.get("significant")
        test = want.get("test", "significant") if want else "significant"
        out: dict[str, Any] = {"check": g["text"], "left": left, "right": right, "op": g["op"]}
        found: list[dict | None] = [self.measure(m)[1].get("_resample")
                                    for m in self.leaves(g["left"]) + self.leaves(g["right"])]
        confidence = float(want["confidence"]) if want else bootstrap.CONFIDENCE
        sig = None
        if all(found):
            resampler = bootstrap.Resampler([res["units"] for res in found if res is not None])
            n = resampler.resamples
            lr = np.broadcast_to(self.replicates(g["left"], resampler), (n,))
            rr = np.broadcast_to(self.replicates(g["right"], resampler), (n,))
            out["left_interval"] = bootstrap.interval(lr, confidence)
            out["right_interval"] = bootstrap.interval(rr, confidence)
            if want:
                sig = {**bootstrap.significance(lr, rr, g["op"], confidence, test), "resamples": n}
                if all(m["metric"] == "lm_eval" for m in self.leaves(g["left"]) + self.leaves(g["right"])):
                    sig["units"] = "documents"
        if want:
            if sig is None:
                sig = {"test": test, "held": False, "bound": None, "share": None, "difference_interval": None,
                       "why": "a measurement in it has no per-session figures to resample"}
            out["significance"] = {"confidence": confidence, **sig}
            # not_worse passes what is below the line by less than the noise: its test alone decides
            passed = bool(sig["held"]) and (passed or test == "not_worse")
        out["passed"] = passed
        out["detail"] = gate_detail(out)
        return out

    def close(self) -> None:
        for m in self.models.values():
            m.close()


def describe(m: dict) -> str:
    if "const" in m:
        return f"{m['const']:g}"
    if "op" in m:
        return f"({describe(m['left'])} {m['op']} {describe(m['right'])})"
    return m.get("label") or f"{m['metric']}[{m['model']}]"


def lm_eval(inputs: dict[str, Path], m: dict) -> dict:
    """lm-evaluation-harness on a model folder (formula/runtime/lmeval.py): each figure the task
    reports, with an interval over its documents."""
    from formula.runtime import lmeval

    args = m.get("args", {})
    task, manager, here = str(args["task"]), None, os.getcwd()
    start = time.perf_counter()
    try:
        if m.get("task_dir"):  # run from its folder: the data files it names are relative to it
            task, manager = lmeval.task_file(Path(inputs[m["task_dir"]]), m["task_file"])
            os.chdir(inputs[m["task_dir"]])
        found = lmeval.run_task(Path(inputs[m["model"]]).resolve(), task, int(args.get("limit", 1000)),
                                int(args.get("num_fewshot", 0)), int(args.get("batch_size", 8)), manager)
    finally:
        os.chdir(here)
    figures = found["figures"]
    if not figures:
        fail(f"lm_eval: task {found['task']} reported no figures")
    r: dict[str, Any] = {**figures, "value": next(iter(figures.values())), "figures": sorted(figures),
                         "task": found["task"], "documents": found["documents"],
                         "num_fewshot": int(args.get("num_fewshot", 0)), "harness": found["version"],
                         "seconds": round(time.perf_counter() - start, 3)}
    with_intervals(r, found["units"], found["stats"])
    for f, se in found["stderr"].items():  # figures the harness only aggregates
        if f in figures and f not in r["ci"]:
            r["ci"][f] = [figures[f] - lmeval.Z95 * se, figures[f] + lmeval.Z95 * se]
    return r


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    if any(m.get("task_dir") for m in _measurements(cfg)):  # task files: nothing downloaded
        from formula.runtime import lmeval

        lmeval.offline(work / "hf-datasets")
    ev = Evaluator(inputs)
    gates = []
    try:
        for g in cfg.gates:
            gates.append(ev.gate(g))
        for m in cfg.metrics:
            ev.value(m)
    finally:
        ev.close()
    measured = {k: {kk: vv for kk, vv in v.items() if kk != "results" and not kk.startswith("_")}
                for k, v in ev.results.items()}
    (output / "eval.json").write_text(json.dumps(_finite({"on": cfg.on, "gates": gates, "metrics": measured}),
                                                 indent=1, sort_keys=True))
    suites = {k: v["results"] for k, v in ev.results.items() if "results" in v}
    if suites:
        (output / "generations.json").write_text(json.dumps(_finite(suites), indent=1, ensure_ascii=False))
    (output / "checks.json").write_text(json.dumps(
        [{"check": g["check"], "passed": g["passed"], "detail": g["detail"]} for g in gates], indent=1))
    (output / "report.md").write_text(report(cfg, gates, measured, ev.results))
    flat = {}
    for k, v in measured.items():
        if v["metric"] == "next_action":
            from formula.runtime.nextaction import FIGURES

            flat.update({f"{k}.{f}": round(v[f], 6) for f in FIGURES
                         if v.get(f) is not None and not math.isnan(v[f])})
        elif v["metric"] == "lm_eval":
            flat.update({f"{k}.{f}": round(v[f], 6) for f in v["figures"] if not math.isnan(v[f])})
        else:
            flat[k] = round(v["value"], 6)
    flat["gates_passed"] = sum(g["passed"] for g in gates)
    flat["gates_failed"] = sum(not g["passed"] for g in gates)
    flat["template_sha256"] = template_of(Path(inputs["on"]))
    (output / "metrics.json").write_text(json.dumps(flat, sort_keys=True))


def _measurements(cfg: Config) -> list[dict]:
    """Every measurement a gate or a metric names."""
    out, todo = [], [*(g[side] for g in cfg.gates for side in ("left", "right")), *cfg.metrics]
    while todo:
        e = todo.pop()
        if "op" in e:
            todo += [e["left"], e["right"]]
        elif "metric" in e:
            out.append(e)
    return out


def template_of(path: Path) -> str | None:
    """The sha256 of the chat template the measured model carries (an exported file's, as its
    step recorded it, or a model folder's)."""
    if any((path / f.file).is_file() for f in FORMATS.values()):
        return json.loads((path / "metrics.json").read_text()).get("template_sha256")
    jinja = path / "chat_template.jinja"
    return template_hash(jinja.read_text(encoding="utf-8")) if jinja.is_file() else None


def _finite(x):
    """JSON without NaN or infinities (None instead)."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _num(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _with_ci(v, ci) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci and ci[0] != ci[1] else "")


def gate_detail(g: dict) -> str:
    left, right, op = g["left"], g["right"], g["op"]
    holds = OPS[op](left, right)
    lhs, rhs = _with_ci(left, g.get("left_interval")), _with_ci(right, g.get("right_interval"))
    if holds:
        text = f"{lhs} {op} {rhs}"
    else:
        gap = abs(left - right)
        text = (f"{lhs} is not {op} {rhs} (off by {_num(gap)}"
                + (f", {100 * gap / abs(right):.1f}%" if right and not math.isnan(gap) else "") + ")")
    sig = g.get("significance")
    if sig is not None:
        level, units = f"{100 * sig['confidence']:g}%", sig.get("units", "sessions")
        if sig.get("why"):
            text += f"; significance unknown: {sig['why']}"
        elif sig.get("test") == "not_worse":
            share = "none" if sig["share"] is None else f"{100 * sig['share']:.1f}%"
            verdict = "not worse beyond the noise" if sig["held"] else "worse beyond the noise"
            text += (f"; {verdict}: holds in {share} of {sig['resamples']} paired resamples of the {units} "
                     f"(one-sided {level} bound on the difference {sig['bound']:+.3g})")
        elif sig["held"]:
            text += (f"; significant: holds in {100 * sig['share']:.1f}% of {sig['resamples']} paired "
                     f"resamples of the {units} (one-sided {level} bound on the difference "
                     f"{sig['bound']:+.3g})")
        else:
            share = "none" if sig["share"] is None else f"{100 * sig['share']:.1f}%"
            bound = "n/a" if sig["bound"] is None else f"{sig['bound']:+.3g}"
            text += (f"; not significant: holds in {share} of {sig.get('resamples', 0)} paired resamples "
                     f"of the {units}; the one-sided {level} bound on the difference is {bound}")
    return text


def _cell(text: str, limit: int = 280) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return text.replace("\n", "<br>") or "(nothing)"


def _condition(c: dict) -> str:
    """A `where` condition as the formula writes it."""
    if "all" in c or "any" in c:
        parts: list[dict] = c.get("all") or c.get("any") or []
        joined = (" and " if "all" in c else " or ").join(_condition(p) for p in parts)
        return f"({joined})" if "any" in c and len(parts) > 1 else joined
    if "not" in c:
        return f"not ({_condition(c['not'])})"
    if "always" in c:
        return "true" if c["always"] else "false"
    return f"{c['field']} {c['op']} {json.dumps(c['value'])}"


def _target(label: str) -> str:
    return label.rsplit(" of ", 1)[-1]


def next_action_report(measured: dict, results: dict, on: str, examples: int = 4) -> list[str]:
    """Per data view: each figure for every model measured on it (value and 95% interval), per
    role and per outcome, the speed, and a few turns side by side (model outputs scrubbed)."""
    from formula.runtime.nextaction import FIGURES

    views: dict[tuple, list[str]] = {}
    for k, v in sorted(measured.items()):
        if v["metric"] == "next_action":
            views.setdefault((v.get("data"), v.get("split"), json.dumps(v.get("where"))), []).append(k)
    lines: list[str] = []
    for (_, split, where), labels in views.items():
        labels.sort(key=lambda k: (_target(k) != on, k))  # the measured model first, then its bases
        first = measured[labels[0]]
        names = [_target(k) for k in labels]
        lines += ["", f"## Next action on {split} sessions" + (f" where `{_condition(json.loads(where))}`"
                                                               if where != "null" else ""), "",
                  f"{first['turns']} assistant turns in {first['sessions']} sessions "
                  f"({first['call_turns']} tool calls, {first['reply_turns']} replies); values with "
                  f"95% bootstrap intervals over sessions.", "",
                  "| figure | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
        for f in FIGURES:
            lines.append(f"| {f} | " + " | ".join(_with_ci(measured[k].get(f), measured[k]["ci"].get(f))
                                                  for k in labels) + " |")
        for key in ("role", "outcome"):
            groups = sorted(set().union(*(measured[k].get(f"by_{key}", {}) for k in labels)))
            lines += ["", f"Per {key} (" + " / ".join(f"`{n}`" for n in names) + "):", "",
                      f"| {key} | turns | " + " | ".join(FIGURES) + " |", "|---|---|" + "---|" * len(FIGURES)]
            for grp in groups:
                parts = [measured[k].get(f"by_{key}", {}).get(grp, {}) for k in labels]
                turns = next((p["turns"] for p in parts if p), 0)
                cells = [" / ".join(_with_ci(p.get(f), (p.get("ci") or {}).get(f)) for p in parts) for f in FIGURES]
                lines.append(f"| {grp} | {turns} | " + " | ".join(cells) + " |")
        lines += ["", "Speed: " + "; ".join(
            f"`{_target(k)}` {measured[k]['turns']} turns in {measured[k]['seconds']:.1f} s "
            f"({measured[k].get('tokens_per_second') or 0:.0f} prompt and generated tokens/s, "
            f"{measured[k].get('generated_tokens', 0)} generated"
            + (f", {100 * measured[k]['reused_tokens'] / max(1, measured[k]['prompt_tokens']):.0f}% of "
               f"prompt tokens reused from the KV cache" if measured[k].get("reused_tokens") else "") + ")"
            for k in labels) + "."]
        lines += _side_by_side(labels, results, examples)
    return lines


def _side_by_side(labels: list[str], results: dict, examples: int) -> list[str]:
    from formula.runtime.corpus.scrub import scrub_text

    records = results[labels[0]].get("results") or []
    others = [{(r["session"], r["turn"]): r for r in results[k].get("results") or []} for k in labels[1:]]
    calls = [r for r in records if r["reference_kind"] == "call"][: examples - examples // 2]
    replies = [r for r in records if r["reference_kind"] != "call"][: examples // 2]
    picked = sorted(calls + replies, key=lambda r: records.index(r))
    if not picked:
        return []
    lines = ["", "Held-out turns side by side (the reference as the corpus scrubbed it; model outputs "
             "scrubbed the same way):", "",
             "| turn | reference | " + " | ".join(f"`{_target(k)}`" for k in labels) + " |",
             "|---|---|" + "---|" * len(labels)]
    for r in picked:
        outs = [r] + [o.get((r["session"], r["turn"]), {}) for o in others]
        lines.append(f"| {r.get('role') or ''} {r['session'][:8]} #{r['turn']} | {_cell(r['reference'])} | "
                     + " | ".join(_cell(scrub_text(o.get("output", ""))) for o in outs) + " |")
    return lines


def report(cfg: Config, gates: list[dict], measured: dict, results: dict | None = None) -> str:
    lines = [f"# eval `{cfg.name}` on `{cfg.on}`", "", "| gate | result | |", "|---|---|---|"]
    lines += [f"| `{g['check']}` | {'passed' if g['passed'] else '**FAILED**'} | {g['detail']} |" for g in gates]
    others = {k: v for k, v in measured.items() if v["metric"] not in ("next_action", "lm_eval")}
    if others:
        lines += ["", "| measurement | value | 95% interval | over |", "|---|---|---|---|"]
    for k, v in sorted(others.items()):
        over = (f"{v['tokens']} tokens" if "tokens" in v else f"{v.get('prompts', v.get('cases'))} prompts")
        ci = (v.get("ci") or {}).get("value")
        lines.append(f"| `{k}` | {v['value']:.4g} | {f'{ci[0]:.4g} to {ci[1]:.4g}' if ci else ''} | {over} |")
    lines += next_action_report(measured, results or {}, cfg.on)
    lines += lm_eval_report(measured, cfg.on)
    return "\n".join(lines) + "\n"


def lm_eval_report(measured: dict, on: str) -> list[str]:
    """Per lm-evaluation-harness task: each figure for every model measured on it, with its 95%
    interval (over the documents, or from the harness's standard error)."""
    tasks: dict[tuple, list[str]] = {}
    for k, v in sorted(measured.items()):
        if v["metric"] == "lm_eval":
            tasks.setdefault((v["task"], v["documents"], v["num_fewshot"]), []).append(k)
    lines: list[str] = []
    for (task, documents, shots), labels in tasks.items():
        labels.sort(key=lambda k: (_target(k) != on, k))
        names = [_target(k) for k in labels]
        figures = sorted(set().union(*(measured[k]["figures"] for k in labels)))
        lines += ["", f"## lm-evaluation-harness: {task}", "",
                  f"{documents} documents, {shots}-shot; values with 95% intervals (bootstrap over "
                  f"documents, or the harness's standard error); lm-eval {measured[labels[0]]['harness']}.", "",
                  "| figure | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
        for f in figures:
            lines.append(f"| {f} | " + " | ".join(_with_ci(measured[k].get(f), measured[k]["ci"].get(f))
                                                  for k in labels) + " |")
    return lines


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

"""The eval step: metrics on built models and the gates a formula puts on them.

A model folder (safetensors) is measured with transformers; an exported file the way its
format's runtime module says (a GGUF with llama.cpp, generating through the chat template
embedded in the file, as it will be served: `formula/runtime/formats/gguf.py`). Both measure the same
token ids (the tokenize step's), so their perplexities compare. Failed gates do not fail the
step: its report is an artifact like any other and is cached; the build reads `checks.json` and
exits non-zero while any gate fails, naming it and by how much.
"""

from __future__ import annotations

import json
import math
import operator
import re
from pathlib import Path
from typing import Any

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


def perplexity(model, examples: list[dict]) -> dict:
    total, count = 0.0, 0
    for r in examples:
        loss, n = model.nll(list(r["input_ids"]), list(r["labels"]))
        total, count = total + loss, count + n
    if not count:
        fail("perplexity: the data has no assistant tokens to measure")
    return {"value": math.exp(total / count), "tokens": count, "examples": len(examples)}


def eos_rate(model, examples: list[dict], max_new_tokens: int) -> dict:
    prompts = [json.loads(r["prompt"]) for r in examples if r.get("prompt")][:MAX_GENERATIONS]
    prompts = [p for p in prompts if p]
    if not prompts:
        fail("eos_rate: the data has no prompts (sessions that open with a user turn)")
    stopped = sum(model.chat(p, max_new_tokens)[1] for p in prompts)
    return {"value": stopped / len(prompts), "stopped": stopped, "prompts": len(prompts),
            "max_new_tokens": max_new_tokens}


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
    return {"value": passed / len(results), "pass_rate": passed / len(results), "passed": passed,
            "cases": len(results), "scorer": scorer, "results": results}


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
            model = self.model(m["model"])
            try:
                if m["metric"] == "perplexity":
                    r = perplexity(model, rows(Path(self.inputs[m["data"]]), m["split"], m.get("where")))
                elif m["metric"] == "eos_rate":
                    r = eos_rate(model, rows(Path(self.inputs[m["data"]]), m["split"], m.get("where")),
                                 int(args.get("max_new_tokens", 64)))
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
            self.results[label] = {"metric": m["metric"], "model": m["model"], **r}
        return label, self.results[label]

    def value(self, expr: dict) -> float:
        if "const" in expr:
            return float(expr["const"])
        if "op" in expr:
            a, b = self.value(expr["left"]), self.value(expr["right"])
            return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else math.inf}[expr["op"]]
        _, r = self.measure(expr)
        return float(r[expr["attr"]] if expr.get("attr") else r["value"])

    def close(self) -> None:
        for m in self.models.values():
            m.close()


def describe(m: dict) -> str:
    if "const" in m:
        return f"{m['const']:g}"
    if "op" in m:
        return f"({describe(m['left'])} {m['op']} {describe(m['right'])})"
    return m.get("label") or f"{m['metric']}[{m['model']}]"


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    ev = Evaluator(inputs)
    gates = []
    try:
        for g in cfg.gates:
            left, right = ev.value(g["left"]), ev.value(g["right"])
            passed = OPS[g["op"]](left, right)
            gap = abs(left - right)
            detail = (f"{left:.4g} {g['op']} {right:.4g}" if passed else
                      f"{left:.4g} is not {g['op']} {right:.4g} (off by {gap:.4g}"
                      + (f", {100 * gap / abs(right):.1f}%" if right else "") + ")")
            gates.append({"check": g["text"], "passed": bool(passed), "left": left, "right": right,
                          "op": g["op"], "detail": detail})
        for m in cfg.metrics:
            ev.value(m)
    finally:
        ev.close()
    measured = {k: {kk: vv for kk, vv in v.items() if kk != "results"} for k, v in ev.results.items()}
    (output / "eval.json").write_text(json.dumps({"on": cfg.on, "gates": gates, "metrics": measured},
                                                 indent=1, sort_keys=True))
    suites = {k: v["results"] for k, v in ev.results.items() if "results" in v}
    if suites:
        (output / "generations.json").write_text(json.dumps(suites, indent=1, ensure_ascii=False))
    (output / "checks.json").write_text(json.dumps(
        [{"check": g["check"], "passed": g["passed"], "detail": g["detail"]} for g in gates], indent=1))
    (output / "report.md").write_text(report(cfg, gates, measured))
    flat = {k: round(v["value"], 6) for k, v in measured.items()}
    flat["gates_passed"] = sum(g["passed"] for g in gates)
    flat["gates_failed"] = sum(not g["passed"] for g in gates)
    flat["template_sha256"] = template_of(Path(inputs["on"]))
    (output / "metrics.json").write_text(json.dumps(flat, sort_keys=True))


def template_of(path: Path) -> str | None:
    """The sha256 of the chat template the measured model carries (an exported file's, as its
    step recorded it, or a model folder's)."""
    if any((path / f.file).is_file() for f in FORMATS.values()):
        return json.loads((path / "metrics.json").read_text()).get("template_sha256")
    jinja = path / "chat_template.jinja"
    return template_hash(jinja.read_text(encoding="utf-8")) if jinja.is_file() else None


def report(cfg: Config, gates: list[dict], measured: dict) -> str:
    lines = [f"# eval `{cfg.name}` on `{cfg.on}`", "", "| gate | result | |", "|---|---|---|"]
    lines += [f"| `{g['check']}` | {'passed' if g['passed'] else '**FAILED**'} | {g['detail']} |" for g in gates]
    lines += ["", "| measurement | value | over |", "|---|---|---|"]
    for k, v in sorted(measured.items()):
        over = (f"{v['tokens']} tokens" if "tokens" in v else f"{v.get('prompts', v.get('cases'))} prompts")
        lines.append(f"| `{k}` | {v['value']:.4g} | {over} |")
    return "\n".join(lines) + "\n"


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

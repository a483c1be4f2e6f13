"""Typed plan → step graph: one step per unit of work, each with its whole configuration.

    corpus.C          load, scrub, filter and split a corpus          (data files)
    tokenizer.M       train a BPE tokenizer for a model made by init  (corpus.C)
    model.M           make, fetch or read a base model                (tokenizer.M, files)
    tokenize.C.M      a corpus with a model's tokenizer and template  (corpus.C, model.M)
    pairs.P           preference pairs                                (corpus.C or files)
    train.S           one training stage                              (model or train, data)
    assemble.A        a standalone model folder                       (train.S)
    gguf.E.Q          one GGUF file per quant type                    (assemble.A or model.M)
    eval.V            metrics and gates                               (what it measures, data)

Configurations are plain JSON-able values; the runtime writes them as Hydra YAML, validates
them against each step's structured config, and keys steps by them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable

from formula.runtime.graph import FileInput, Graph, StepSpec

from . import plan as P


def to_config(value: object) -> object:
    """Plan records as plain data; the members of a union carry a `type` tag."""
    if isinstance(value, (P.Cmp, P.AllOf, P.AnyOf, P.Negate, P.Always)):
        return pred_config(value)
    if dataclasses.is_dataclass(value):
        out = {"type": _snake(type(value).__name__)}
        for f in dataclasses.fields(value):
            if f.name == "origin":
                continue
            out[f.name] = to_config(getattr(value, f.name))
        return out
    if isinstance(value, dict):
        return {k: to_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_config(v) for v in value]
    return value


def pred_config(pred: P.Pred | None) -> object:
    if pred is None:
        return None
    if isinstance(pred, P.Cmp):
        return {"field": pred.field, "op": pred.op,
                "value": list(pred.value) if isinstance(pred.value, tuple) else pred.value}
    if isinstance(pred, P.AllOf):
        return {"all": [pred_config(p) for p in pred.parts]}
    if isinstance(pred, P.AnyOf):
        return {"any": [pred_config(p) for p in pred.parts]}
    if isinstance(pred, P.Negate):
        return {"not": pred_config(pred.part)}
    return {"always": pred.value}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")


class _Lowering:
    def __init__(self, plan: P.Plan):
        self.plan = plan
        self.steps: dict[str, StepSpec] = {}

    def add(self, spec: StepSpec) -> str:
        self.steps.setdefault(spec.name, spec)
        return spec.name

    @staticmethod
    def origin(o: P.Origin) -> str:
        return str(o)

    # --- one function per kind ---------------------------------------------------------------

    def corpus(self, name: str) -> str:
        c = self.plan.corpora[name]
        files: dict[str, FileInput] = {}
        sources = []
        for i, src in enumerate(c.sources):
            if isinstance(src, P.TranscriptSource):
                files[f"source{i}"] = FileInput(src.glob)
                if src.meta == "sidecar":
                    files[f"source{i}_meta"] = FileInput(src.meta_arg, is_glob=False)
            else:
                files[f"source{i}"] = FileInput(_expand(src.projects).rstrip("/") + "/**/*.jsonl")
                files[f"source{i}_beads"] = FileInput(_expand(src.beads), is_glob=False)
                if src.outcomes:
                    files[f"source{i}_outcomes"] = FileInput(src.outcomes, is_glob=False)
            sources.append({**to_config(src), "input": f"source{i}"})
        config = {k: v for k, v in to_config(c).items() if k not in ("type", "name")}
        config.update(name=name, sources=sources)
        return self.add(StepSpec(f"corpus.{name}", "corpus", config, {}, files, self.origin(c.origin)))

    def model(self, name: str) -> str:
        m = self.plan.models[name]
        deps, files = {}, {}
        if isinstance(m.tokenizer, P.TrainedTokenizer):
            corpus_step = self.corpus(m.tokenizer.corpus)
            deps["tokenizer"] = self.add(StepSpec(
                f"tokenizer.{name}", "tokenizer",
                {"vocab": m.tokenizer.vocab, "template": to_config(m.template), "corpus": m.tokenizer.corpus},
                {"corpus": corpus_step}, {}, self.origin(m.origin)))
        if isinstance(m.source, P.PathSource):
            files["weights"] = FileInput(m.source.dir, is_glob=False)
        if isinstance(m.tokenizer, P.PathSource):
            files["tokenizer"] = FileInput(m.tokenizer.dir, is_glob=False)
        if isinstance(m.template, P.FileTemplate):
            files["template"] = FileInput(m.template.path, is_glob=False)
        config = {"name": name, "source": to_config(m.source), "tokenizer": to_config(m.tokenizer),
                  "template": to_config(m.template), "dtype": m.dtype}
        return self.add(StepSpec(f"model.{name}", "model", config, deps, files, self.origin(m.origin)))

    def root_model(self, name: str) -> str:
        seen = set()
        while name in self.plan.stages and name not in seen:
            seen.add(name)
            name = self.plan.stages[name].model
        return name

    def tokenize(self, corpus: str, model: str, pack_to: int | None = None) -> str:
        """One tokenized corpus per model tokenizer; a packed variant is its own artifact."""
        c = self.plan.corpora[corpus]
        config = {"corpus": corpus, "model": model, "max_len": c.max_len, "truncation": c.truncation}
        name = f"tokenize.{corpus}.{model}"
        if pack_to is not None:
            config["pack_to"] = pack_to
            name += ".packed"
        return self.add(StepSpec(name, "tokenize", config,
                                 {"corpus": self.corpus(corpus), "model": self.model(model)}, {},
                                 self.origin(c.origin)))

    def pairs(self, name: str) -> str:
        p = self.plan.pairs[name]
        deps, files = {}, {}
        if p.data is not None:
            deps["corpus"] = self.corpus(p.data.name)
        if p.source is not None:
            files["source"] = FileInput(p.source.glob)
        config = {k: v for k, v in to_config(p).items() if k not in ("type",)}
        return self.add(StepSpec(f"pairs.{name}", "pairs", config, deps, files, self.origin(p.origin)))

    def data(self, view: P.DataView, model: str, pack_to: int | None = None) -> str:
        if view.kind == "pairs":
            return self.pairs(view.name)
        return self.tokenize(view.name, model, pack_to)

    def stage(self, name: str) -> str:
        if f"train.{name}" in self.steps:
            return f"train.{name}"
        s = self.plan.stages[name]
        # Lower a chain of earlier stages from its first one, so that each is lowered once and
        # no call goes deep: 1,000 chained stages take linear time and no recursion.
        chain, seen, m = [], set(), s.model
        while m in self.plan.stages and f"train.{m}" not in self.steps and m not in seen:
            chain.append(m)
            seen.add(m)
            m = self.plan.stages[m].model
        for earlier in reversed(chain[1:]):
            self.stage(earlier)
        start = self.stage(s.model) if s.model in self.plan.stages else self.model(s.model)
        root = self.root_model(name)
        pack_to = None
        if s.get("packing"):
            pack_to = s.get("max_len") or self.plan.corpora[s.data.name].max_len or 2048
        deps = {"model": start, "data": self.data(s.data, root, pack_to)}
        for i, need in enumerate(s.needs):
            deps[f"needs{i}"] = self.block(need)
        config = {"name": name, "method": s.method, "data": to_config(s.data),
                  "adapter": to_config(s.adapter) if s.adapter else {"type": "full"},
                  "base_model": root, **dict(s.hyper)}
        return self.add(StepSpec(f"train.{name}", "train", config, deps, {}, self.origin(s.origin)))

    def assemble(self, name: str) -> str:
        a = self.plan.assembles[name]
        config = {"name": name, "merge": a.merge, "dtype": a.dtype, "shard_size": a.shard_size,
                  "stage": a.stage, "base_model": self.root_model(a.stage)}
        return self.add(StepSpec(f"assemble.{name}", "assemble", config,
                                 {"stage": self.stage(a.stage)}, {}, self.origin(a.origin)))

    def gguf(self, export: str, quant: str) -> str:
        e = self.plan.exports[export]
        src = self.assemble(e.source) if e.source in self.plan.assembles else self.model(e.source)
        return self.add(StepSpec(f"gguf.{export}.{quant}", "gguf",
                                 {"export": export, "quant": quant, "format": e.format},
                                 {"model": src}, {}, self.origin(e.origin)))

    def target(self, t: P.TargetRef) -> str:
        if t.kind == "model":
            return self.model(t.name)
        if t.kind == "stage":
            return self.stage(t.name)
        if t.kind == "assemble":
            return self.assemble(t.name)
        return self.gguf(t.name, t.quant)

    def target_model(self, t: P.TargetRef) -> str:
        """The base model whose tokenizer the target uses."""
        if t.kind == "model":
            return t.name
        if t.kind == "stage":
            return self.root_model(t.name)
        if t.kind == "assemble":
            return self.root_model(self.plan.assembles[t.name].stage)
        src = self.plan.exports[t.name].source
        return src if src in self.plan.models else self.root_model(self.plan.assembles[src].stage)

    def eval(self, name: str) -> str:
        v = self.plan.evals[name]
        deps = {"on": self.target(v.on)}
        files: dict[str, FileInput] = {}
        names: dict[str, str] = {}

        def metric(m: P.MetricExpr) -> object:
            if isinstance(m, P.Const):
                return {"const": m.value}
            if isinstance(m, P.Arith):
                return {"op": m.op, "left": metric(m.left), "right": metric(m.right)}
            target = m.target or v.on
            model_input = "on" if m.target is None else names.setdefault(
                f"target:{target}", f"model{len(names)}")
            if m.target is not None:
                deps[model_input] = self.target(target)
            out = {"metric": m.metric, "model": model_input, "args": dict(m.args), "attr": m.attr,
                   "label": _label(m, v.on)}
            if m.data is not None:
                data_input = names.setdefault(f"data:{m.data}:{target}", f"data{len(names)}")
                if m.data.kind == "corpus":
                    deps[data_input] = self.tokenize(m.data.name, self.target_model(target))
                else:
                    deps[data_input] = self.pairs(m.data.name)
                out.update(data=data_input, split=m.data.split, where=pred_config(m.data.where))
            if m.metric == "prompts":
                suite = names.setdefault(f"suite:{dict(m.args)['file']}", f"suite{len(names)}")
                files[suite] = FileInput(_resolve(dict(m.args)["file"], v.origin.file), is_glob=False)
                out["suite"] = suite
            return out

        # No source positions in configs: moving a line must not change a step's key.
        gates = [{"left": metric(g.left), "op": g.op, "right": metric(g.right), "text": g.text}
                 for g in v.gates]
        metrics = [metric(m) for m in v.metrics]
        for i, need in enumerate(v.needs):
            deps[f"needs{i}"] = self.block(need)
        config = {"name": name, "on": str(v.on), "gates": gates, "metrics": metrics}
        return self.add(StepSpec(f"eval.{name}", "eval", config, deps, files, self.origin(v.origin)))

    def block(self, name: str) -> str:
        for table, fn in ((self.plan.models, self.model), (self.plan.corpora, self.corpus),
                          (self.plan.pairs, self.pairs), (self.plan.stages, self.stage),
                          (self.plan.assembles, self.assemble), (self.plan.evals, self.eval)):
            if name in table:
                return fn(name)
        e = self.plan.exports[name]
        return [self.gguf(name, q) for q in e.quants][-1]

    def run(self) -> Graph:
        # Every eval and export is a goal; stages, assembles, corpora and pairs that nothing
        # else reaches are goals too, so a formula without evals still builds what it declares.
        for name in self.plan.evals:
            self.eval(name)
        for name, e in self.plan.exports.items():
            for q in e.quants:
                self.gguf(name, q)
        for name in self.plan.assembles:
            self.assemble(name)
        for name in self.plan.stages:
            self.stage(name)
        for name in self.plan.corpora:
            self.corpus(name)
        for name in self.plan.pairs:
            self.pairs(name)
        return Graph(dict(sorted(self.steps.items())))


def _label(m: P.MetricCall, on: P.TargetRef) -> str:
    """The measurement as a reader would write it: `perplexity(tiny, sessions.holdout)`."""
    args = [str(m.target)] if m.target is not None else []
    if m.data is not None:
        args.append(f"{m.data.name}.{m.data.split}" + (" filtered" if m.data.where else ""))
    args += [json.dumps(v) if k == "file" else f"{k} = {v}" for k, v in m.args]
    return f"{m.metric}({', '.join(args)}) of {m.target or on}"


def _expand(path: str) -> str:
    import os

    return os.path.expanduser(path)


def _resolve(path: str, formula_file: str) -> str:
    import os

    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(formula_file)),
                                         os.path.expanduser(path)))


def lower(plan: P.Plan) -> Graph:
    return _Lowering(plan).run()


def step_names(graph: Graph, patterns: Iterable[str]) -> tuple[set[str], list[str]]:
    """Steps matching names or globs (`train.*`); and the patterns that matched nothing."""
    import fnmatch

    found, unmatched = set(), []
    for pat in patterns:
        hits = {n for n in graph.steps if n == pat or fnmatch.fnmatchcase(n, pat)}
        if not hits:
            unmatched.append(pat)
        found |= hits
    return found, unmatched

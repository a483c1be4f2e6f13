"""Typed plan → step graph: one step per unit of work, each with its typed configuration.

    corpus.C          load, scrub, filter and split a corpus          (data files)
    tokenizer.M       train a BPE tokenizer for a model made by init  (corpus.C)
    model.M           make, fetch or read a base model                (tokenizer.M, files)
    tokenize.C.M      a corpus with a model's tokenizer and template  (corpus.C, model.M)
    pairs.P           preference pairs and labeled sessions           (corpus.C or files)
    train.S           one training stage                              (model or train, data)
    assemble.A        a standalone model folder                       (train.S)
    <format>.E.Q      one exported file per quant type (gguf.E.Q)     (assemble.A or model.M)
    eval.V            metrics and gates                               (what it measures, data)

Each step's configuration is built as its record in `formula/contract/steps.py` and written as
plain data (`encode`): the runtime writes that as Hydra YAML, keys the step by it, and the step
reads it back into the same record. The data a stage trains on is its method's
(`formula/methods/`); an export's steps are its format's (`formula/formats/`).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from formula.contract.conditions import to_json
from formula.contract.config import encode
from formula.contract.graph import FileInput, Graph, StepSpec, TaggedInput
from formula.contract.steps import (AssembleConfig, CorpusConfig, EvalConfig, ExportConfig, Full,
                                    ModelConfig, PairsConfig, TokenizeConfig, TokenizerConfig,
                                    TrainConfig)
from formula.methods import LABELED, METHODS, PAIRS

from . import plan as P
from .schema import is_task_file


class _Lowering:
    def __init__(self, plan: P.Plan):
        self.plan = plan
        self.steps: dict[str, StepSpec] = {}

    def add(self, name: str, kind: str, config: object, deps: dict[str, str] | None = None,
            files: dict[str, FileInput] | None = None, origin: P.Origin | None = None,
            tagged: dict[str, TaggedInput] | None = None) -> str:
        # No source positions in configurations: moving a line must not change a step's key.
        self.steps.setdefault(name, StepSpec(name, kind, encode(config), deps or {}, files or {},
                                             str(origin) if origin else "", tagged or {}))
        return name

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
                files[f"source{i}"] = FileInput(os.path.expanduser(src.projects).rstrip("/") + "/**/*.jsonl")
                files[f"source{i}_beads"] = FileInput(os.path.expanduser(src.beads), is_glob=False)
                if src.outcomes:
                    files[f"source{i}_outcomes"] = FileInput(src.outcomes, is_glob=False)
            sources.append(replace(src, input=f"source{i}"))
        config = CorpusConfig(
            name=name, sources=tuple(sources), where=c.where, scrub=c.scrub, dedup=c.dedup,
            dedup_threshold=c.dedup_threshold, holdout=c.holdout, max_len=c.max_len,
            truncation=c.truncation, min_turns=c.min_turns, max_turns=c.max_turns,
            max_repeats=c.max_repeats, on_error=c.on_error, max_dropped=c.max_dropped)
        return self.add(f"corpus.{name}", "corpus", config, {}, files, c.origin)

    def model(self, name: str) -> str:
        m = self.plan.models[name]
        deps, files = {}, {}
        if isinstance(m.tokenizer, P.TrainedTokenizer):
            deps["tokenizer"] = self.add(
                f"tokenizer.{name}", "tokenizer",
                TokenizerConfig(vocab=m.tokenizer.vocab, template=m.template, corpus=m.tokenizer.corpus),
                {"corpus": self.corpus(m.tokenizer.corpus)}, {}, m.origin)
        if isinstance(m.source, P.PathSource):
            files["weights"] = FileInput(m.source.dir, is_glob=False)
        if isinstance(m.tokenizer, P.PathSource):
            files["tokenizer"] = FileInput(m.tokenizer.dir, is_glob=False)
        if isinstance(m.template, P.FileTemplate):
            files["template"] = FileInput(m.template.path, is_glob=False)
        config = ModelConfig(name=name, source=m.source, tokenizer=m.tokenizer, template=m.template,
                             dtype=m.dtype, allow_pickle=m.allow_pickle)
        return self.add(f"model.{name}", "model", config, deps, files, m.origin)

    def tokenize(self, corpus: str, model: str, pack_to: int | None = None) -> str:
        """One tokenized corpus per model tokenizer; a packed variant is its own artifact."""
        c = self.plan.corpora[corpus]
        name = f"tokenize.{corpus}.{model}" + (".packed" if pack_to is not None else "")
        config = TokenizeConfig(corpus=corpus, model=model, max_len=c.max_len, truncation=c.truncation,
                                pack_to=pack_to)
        return self.add(name, "tokenize", config, {"corpus": self.corpus(corpus), "model": self.model(model)},
                        {}, c.origin)

    def pairs(self, name: str) -> str:
        p = self.plan.pairs[name]
        deps, files = {}, {}
        if p.data is not None:
            deps["corpus"] = self.corpus(p.data.name)
        if p.source is not None:
            files["source"] = FileInput(p.source.glob)
        # Pairs must come out of it, unless every stage trained on it takes labeled sessions.
        takes = {METHODS[s.method].data.name for s in self.plan.stages.values()
                 if s.data.kind == "pairs" and s.data.name == name}
        config = PairsConfig(name=name, data=p.data, source=p.source, chosen=p.chosen, rejected=p.rejected,
                             match=p.match, require=LABELED.name if takes == {LABELED.name} else PAIRS.name)
        return self.add(f"pairs.{name}", "pairs", config, deps, files, p.origin)

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
        method = METHODS[s.method]
        if s.data.kind == "pairs":
            data = self.pairs(s.data.name)
        else:
            pack_to = None
            if method.packs(s.options):
                pack_to = s.settings.max_len or self.plan.corpora[s.data.name].max_len or 2048
            data = self.tokenize(s.data.name, s.base_model, pack_to)
        deps = {"model": start, "data": data}
        for i, need in enumerate(s.needs):
            deps[f"needs{i}"] = self.block(need)
        config = TrainConfig(**vars(s.settings), name=name, method=s.method, data=s.data,
                             adapter=s.adapter or Full(), base_model=s.base_model, options=s.options)
        step = self.add(f"train.{name}", "train", config, deps, {}, s.origin)
        # What it asks of the machine that runs it, beside its configuration (not in its key).
        resources = {**s.resources, **({"nodes": s.settings.nodes} if s.settings.nodes > 1 else {})}
        if resources:
            self.steps[step] = replace(self.steps[step], resources=resources)
        return step

    def assemble(self, name: str) -> str:
        a = self.plan.assembles[name]
        config = AssembleConfig(name=name, merge=a.merge, dtype=a.dtype, shard_size=a.shard_size,
                                stage=a.stage, base_model=a.base_model)
        return self.add(f"assemble.{name}", "assemble", config, {"stage": self.stage(a.stage)}, {}, a.origin)

    def export(self, name: str, quant: str) -> str:
        """One step per quant, of the export format's kind: `gguf.E.Q`."""
        e = self.plan.exports[name]
        src = self.assemble(e.source) if e.source in self.plan.assembles else self.model(e.source)
        return self.add(f"{e.format}.{name}.{quant}", e.format,
                        ExportConfig(export=name, quant=quant, format=e.format), {"model": src}, {}, e.origin)

    def target(self, t: P.TargetRef) -> str:
        if t.kind == "model":
            return self.model(t.name)
        if t.kind == "stage":
            return self.stage(t.name)
        if t.kind == "assemble":
            return self.assemble(t.name)
        assert t.quant is not None
        return self.export(t.name, t.quant)

    def target_model(self, t: P.TargetRef) -> str:
        """The base model whose tokenizer the target uses."""
        if t.kind == "model":
            return t.name
        if t.kind == "stage":
            return self.plan.stages[t.name].base_model
        if t.kind == "assemble":
            return self.plan.assembles[t.name].base_model
        return self.plan.exports[t.name].base_model

    def eval(self, name: str) -> str:
        v = self.plan.evals[name]
        deps = {"on": self.target(v.on)}
        files: dict[str, FileInput] = {}
        tagged: dict[str, TaggedInput] = {}
        names: dict[str, str] = {}

        def metric(m: P.MetricExpr) -> dict[str, Any]:
            if isinstance(m, P.Const):
                return {"const": m.value}
            if isinstance(m, P.Arith):
                return {"op": m.op, "left": metric(m.left), "right": metric(m.right)}
            target = m.target or v.on
            model_input = "on" if m.target is None else names.setdefault(
                f"target:{target}", f"model{len(names)}")
            if m.target is not None and m.target.tag is not None:  # an earlier build's output
                tagged[model_input] = TaggedInput(m.target.tag, self.target(replace(target, tag=None)))
            elif m.target is not None:
                deps[model_input] = self.target(target)
            out = {"metric": m.metric, "model": model_input, "args": dict(m.args), "attr": m.attr,
                   "label": _label(m, v.on)}
            if m.data is not None and m.metric == "next_action":  # the sessions, for any model
                data_input = names.setdefault(f"sessions:{m.data}", f"data{len(names)}")
                deps[data_input] = self.corpus(m.data.name)
                out.update(data=data_input, split=m.data.split, where=to_json(m.data.where))
            elif m.data is not None:
                data_input = names.setdefault(f"data:{m.data}:{target}", f"data{len(names)}")
                if m.data.kind == "corpus":
                    deps[data_input] = self.tokenize(m.data.name, self.target_model(target))
                else:
                    deps[data_input] = self.pairs(m.data.name)
                out.update(data=data_input, split=m.data.split, where=to_json(m.data.where))
            if m.metric == "lm_eval" and is_task_file(str(dict(m.args)["task"])):
                # the task file's folder: the YAML and the data it names, read where they are
                path = _resolve(str(dict(m.args)["task"]), v.origin.file)
                task = names.setdefault(f"task:{os.path.dirname(path)}", f"task{len(names)}")
                files[task] = FileInput(os.path.dirname(path), is_glob=False)
                out.update(task_dir=task, task_file=os.path.basename(path))
            if m.metric == "prompts":
                suite = names.setdefault(f"suite:{dict(m.args)['file']}", f"suite{len(names)}")
                files[suite] = FileInput(_resolve(str(dict(m.args)["file"]), v.origin.file), is_glob=False)
                out["suite"] = suite
            return out

        gates = tuple({"left": metric(g.left), "op": g.op, "right": metric(g.right), "text": g.text,
                       **({"significant": {"confidence": g.confidence,
                                           **({"test": g.test} if g.test != "significant" else {})}}
                          if g.confidence is not None else {})}
                      for g in v.gates)
        metrics = tuple(metric(m) for m in v.metrics)
        for i, need in enumerate(v.needs):
            deps[f"needs{i}"] = self.block(need)
        config = EvalConfig(name=name, on=str(v.on), gates=gates, metrics=metrics)
        return self.add(f"eval.{name}", "eval", config, deps, files, v.origin, tagged)

    def block(self, name: str) -> str:
        for table, fn in ((self.plan.models, self.model), (self.plan.corpora, self.corpus),
                          (self.plan.pairs, self.pairs), (self.plan.stages, self.stage),
                          (self.plan.assembles, self.assemble), (self.plan.evals, self.eval)):
            if name in table:
                return fn(name)
        e = self.plan.exports[name]
        return [self.export(name, q) for q in e.quants][-1]

    def run(self) -> Graph:
        # Every eval and export is a goal; stages, assembles, corpora and pairs that nothing
        # else reaches are goals too, so a formula without evals still builds what it declares.
        for name in self.plan.evals:
            self.eval(name)
        for name, e in self.plan.exports.items():
            for q in e.quants:
                self.export(name, q)
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
    args += [json.dumps(v) for k, v in m.args if k in ("file", "task")]  # written first, quoted
    args += [f"{k} = {v}" for k, v in m.args if k not in ("file", "task")]
    return f"{m.metric}({', '.join(args)}) of {m.target or on}"


def _resolve(path: str, formula_file: str) -> str:
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(formula_file)),
                                         os.path.expanduser(path)))


def lower(plan: P.Plan) -> Graph:
    return _Lowering(plan).run()

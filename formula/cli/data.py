"""`formula data F [CORPUS]`: what the corpus step will make of the user's data, before training.

It runs the corpus step's own `collect` in this process (the same loaders, scrubbing, gates
and split as the build, nothing written to the store) and prints per source the files and
examples read, what the transcript loader left out, the drops by reason, roles, outcomes and
how outcomes were linked. `--show ID` and `--sample N` print examples exactly as the model will
see them: the chat template applied, the trained spans (what `{% generation %}` marks) marked.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from formula.cli.common import EXIT_ERRORS, EXIT_OK, EXIT_USAGE
from formula.cli.common import use_color as _use_color


def _corpus_steps(graph, name: str | None):
    steps = [s for s in graph.steps.values() if s.kind == "corpus"]
    if name:
        steps = [s for s in steps if s.name in (name, f"corpus.{name}")]
    return steps


def _template_for(graph, corpus_step: str) -> tuple[str | None, str]:
    """The chat template of the first model that tokenizes this corpus: (text, where from)."""
    from formula.contract.config import decode
    from formula.contract.steps import FileTemplate, ModelConfig, NamedTemplate, PathSource
    from formula.contract.templates import NAMED

    corpus = corpus_step.split(".", 1)[1]
    for s in graph.steps.values():
        if s.kind == "tokenize" and s.config.get("corpus") == corpus:
            spec = graph.steps.get(f"model.{s.config.get('model')}")
            model = decode(ModelConfig, spec.config) if spec else ModelConfig()
            tpl = model.template
            if isinstance(tpl, NamedTemplate) and tpl.name in NAMED:
                return NAMED[tpl.name], f"template `{tpl.name}` of model `{s.config['model']}`"
            if isinstance(tpl, FileTemplate) and Path(tpl.path).is_file():
                return Path(tpl.path).read_text(encoding="utf-8"), tpl.path
            if isinstance(model.source, PathSource):
                cfg = Path(model.source.dir) / "tokenizer_config.json"
                if cfg.is_file():
                    text = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
                    if isinstance(text, str):
                        return text, str(cfg)
            return None, f"model `{s.config.get('model')}` uses its own template, known after it is fetched"
    return NAMED["chatml"], "template `chatml` (no model tokenizes this corpus)"


def render(template: str, messages: list[dict], color: bool) -> str:
    """The conversation through the template, trained characters marked."""
    from transformers.utils.chat_template_utils import render_jinja_template

    # (texts, generation spans); transformers types the spans as strings, they are (start, end)
    result: Any = render_jinja_template([messages], chat_template=template, return_assistant_tokens_mask=True)
    text, spans = result[0][0], result[1][0]
    open_, close = ("\x1b[1;32m", "\x1b[0m") if color else ("⟦", "⟧")
    out: list[str] = []
    at = 0
    for start, end in spans:
        out += [text[at:start], open_, text[start:end], close]
        at = end
    out.append(text[at:])
    return "".join(out)


def _table(title: str, counts: dict) -> str:
    if not counts:
        return f"  {title}: none"
    return f"  {title}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def summary(corpus, spec, seconds: float) -> str:
    rep = corpus.report()
    lines = [f"corpus {spec.name.split('.', 1)[1]}  ({spec.origin})"]
    for src in rep["sources"]:
        pattern = spec.files.get(src["source"])
        lines.append(f"  {src['source']}: {pattern.pattern if pattern else ''}: {src['files']} files → "
                     f"{src['sessions']} examples")
    tr = rep["transcripts"]
    if tr["files"]:
        lines.append(_table("transcript files", tr["files"]))
        lines.append(_table("examples", tr["examples"]))
        lines.append(_table("events left out", tr["events_left_out"])
                     + (f"; tool results without their call: {tr['orphan_results']}" if tr["orphan_results"] else ""))
    lines.append("  " + " → ".join(f"{s['stage']}: {s['sessions']}" for s in rep["stages"])
                 + f"; train {rep['train']}, holdout {rep['holdout']}")
    lines.append(_table("dropped", rep["dropped"]) + f" ({rep['dropped_share']:.0%} of selected)")
    lines.append(_table("kinds", rep["kinds"]))
    lines.append(_table("roles", rep["roles"]))
    lines.append(_table("outcomes", rep["outcomes"]))
    links = rep.get("links") or {}
    if links:
        lines.append(_table("linked by", links.get("by_link", links.get("links", {}))))
        unlinked = links.get("unlinked", [])
        if unlinked:
            shown = ", ".join(unlinked[:8]) + (f" and {len(unlinked) - 8} more" if len(unlinked) > 8 else "")
            lines.append(f"  unlinked ({len(unlinked)}): {shown}")
    if rep["skipped_lines"]:
        lines.append(f"  skipped lines: {len(rep['skipped_lines'])} (first: {rep['skipped_lines'][0]})")
    lines.append(f"  read in {seconds:.2f} s")
    return "\n".join(lines)


def cmd_data(ns: argparse.Namespace) -> int:
    from formula.contract.config import decode
    from formula.runtime.steps import corpus as corpus_step

    if ns.corpus and "=" in ns.corpus:  # an override, not a corpus name
        ns.overrides, ns.corpus = [ns.corpus, *ns.overrides], None
    plan, graph = ns.compile(ns.formula, ns.overrides)
    if graph is None:
        return EXIT_ERRORS
    steps = _corpus_steps(graph, ns.corpus)
    if not steps:
        known = ", ".join(s.name.split(".", 1)[1] for s in _corpus_steps(graph, None)) or "none"
        print(f"formula: {ns.formula} has no corpus `{ns.corpus}` (corpora: {known})" if ns.corpus else
              f"formula: {ns.formula} has no corpus", file=sys.stderr)
        return EXIT_USAGE
    color = _use_color(sys.stdout)
    reports = []
    for spec in steps:
        cfg = decode(corpus_step.Config, spec.config)
        inputs = {name: Path(fi.pattern) for name, fi in spec.files.items()}
        started = time.perf_counter()
        try:
            corpus = corpus_step.collect(cfg, inputs)
        except SystemExit:  # `fail` printed the reason, as the step would
            return EXIT_ERRORS
        seconds = time.perf_counter() - started
        if ns.json:
            reports.append({"corpus": spec.name, "seconds": round(seconds, 3), **corpus.report()})
        else:
            print(summary(corpus, spec, seconds))
        examples = {s.id: s for s in corpus.kept + corpus.rejected}
        chosen = list(ns.show or [])
        missing = [i for i in chosen if i not in examples]
        if missing:
            near = [i for i in examples if any(m in i for m in missing)][:5]
            print(f"formula: no example {', '.join(missing)} in corpus {spec.name}"
                  + (f" (did you mean {', '.join(near)}?)" if near else ""), file=sys.stderr)
            return EXIT_USAGE
        if ns.sample:
            pool = sorted(s.id for s in corpus.kept)
            chosen += random.Random(ns.seed).sample(pool, min(ns.sample, len(pool)))
        if chosen:
            template, where = _template_for(graph, spec.name)
            for sid in chosen:
                s = examples[sid]
                meta = {k: v for k, v in sorted(s.meta.items()) if k not in ("cwd",)}
                print(f"\n── {sid}  {json.dumps(meta, ensure_ascii=False)}")
                if template is None:
                    print(f"   ({where}; messages as JSON)")
                    print(json.dumps(s.messages, indent=1, ensure_ascii=False))
                else:
                    print(f"   ({where}; trained spans {'in green' if color else 'between ⟦ ⟧'})")
                    try:
                        print(render(template, s.messages, color))
                    except Exception as exc:
                        from formula.contract.templates import template_error

                        what = template_error(exc)
                        if what is None:
                            raise
                        print(f"formula: the chat template ({where}) fails on {sid}: {what}", file=sys.stderr)
                        return EXIT_ERRORS
    if ns.json:
        print(json.dumps(reports, indent=1, sort_keys=True))
    return EXIT_OK


def add_command(sub, compile_formula) -> None:
    """`formula data`; `compile_formula(path, overrides)` gives (plan, graph) as the build commands do."""
    p = sub.add_parser("data", help="what the corpus step will make of your data, before any training",
                       description="Read a formula's corpus sources as the build would (loaders, "
                       "scrubbing, gates, split) and report per source what was read, kept and dropped, "
                       "roles, outcomes and how they were linked; print examples as the model sees them.")
    p.add_argument("formula")
    p.add_argument("corpus", nargs="?", help="one corpus of the formula (default: all)")
    p.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra-style overrides")
    p.add_argument("--show", action="append", metavar="ID", help="print this example through the chat template")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="print N kept examples, chosen at random")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--json", action="store_true", help="the reports as JSON")
    p.set_defaults(func=cmd_data, compile=compile_formula)


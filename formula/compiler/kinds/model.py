"""`model` blocks → ModelPlan: the source's shapes fit, a model made by init gets a tokenizer and a
named template, and the template fits the tokenizer where both are known without building."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from formula.contract import hublock, templates, weights
from formula.methods import METHODS

from .. import plan
from ..evaluate import INVALID, FuncValue
from ..diagnostics import Label, warning
from ..resolve import BlockDef
from ..source import Source, Span
from .common import Checked, Checker


def build(ck: Checker, c: Checked) -> plan.ModelPlan | None:
    v, b = c.values, c.block
    src = v.get("from")
    if not isinstance(src, FuncValue):
        return None
    source: plan.ModelSource
    if src.name == "hub":
        source = _pinned(ck, plan.HubSource(src.args["id"], src.args["revision"]),
                         c.nodes["from"].value.span)
    elif src.name == "path":
        source = plan.PathSource(ck.path(b, src.args["dir"]))
    else:
        a = src.args
        kv = a["kv_heads"] if a["kv_heads"] is not None else a["heads"]
        span = c.nodes["from"].value.span
        if a["hidden"] % a["heads"]:
            ck.err("bad-shape", f"hidden size {a['hidden']} is not divisible by "
                   f"{a['heads']} heads", span, "shapes do not fit",
                   help="choose heads that divide hidden")
            return None
        if a["heads"] % kv:
            ck.err("bad-shape", f"{a['heads']} heads cannot be shared by {kv} kv_heads",
                   span, "shapes do not fit", help="kv_heads must divide heads")
            return None
        if (a["hidden"] // a["heads"]) % 2:
            ck.err("bad-shape", f"head size {a['hidden'] // a['heads']} is odd", span,
                   "rotary embeddings need an even head size",
                   help="choose hidden and heads so that hidden / heads is even")
            return None
        source = plan.InitSource(arch=a["arch"], hidden=a["hidden"], layers=a["layers"], heads=a["heads"],
                                 kv_heads=kv, ffn=a["ffn"], context=a["context"], seed=a["seed"])
    tok = v.get("tokenizer")
    tokenizer: plan.TokenizerSource
    if tok == "own":
        if isinstance(source, plan.InitSource):
            ck.err("init-needs-tokenizer", f"model `{b.name.name}` is made by `init` and has "
                   "no tokenizer of its own", b.name.span, "no tokenizer",
                   help="add `tokenizer = train_bpe(CORPUS, vocab = 512)`")
            return None
        tokenizer = plan.OwnTokenizer()
    elif isinstance(tok, FuncValue):
        if tok.name == "train_bpe":
            tokenizer = plan.TrainedTokenizer(tok.args["corpus"].block.qualified, tok.args["vocab"])
        elif tok.name == "hub":
            tokenizer = _pinned(ck, plan.HubSource(tok.args["id"], tok.args["revision"]),
                                c.nodes["tokenizer"].value.span)
        else:
            tokenizer = plan.PathSource(ck.path(b, tok.args["dir"]))
    else:
        return None
    tmpl = v.get("template")
    if tmpl is None:
        tmpl = "chatml" if isinstance(source, plan.InitSource) else "own"
    if tmpl is INVALID:
        return None
    if tmpl == "own" and isinstance(source, plan.InitSource) and isinstance(tokenizer, plan.TrainedTokenizer):
        ck.err("no-template", f"model `{b.name.name}` has no chat template of its own",
               c.nodes["template"].value.span, "nothing to keep",
               help="a model made by `init` needs a named template: `template = chatml`")
        return None
    template = (plan.FileTemplate(ck.path(b, tmpl.args["path"])) if isinstance(tmpl, FuncValue)
                else plan.NamedTemplate(tmpl))
    span = c.nodes["template"].value.span if "template" in c.nodes else b.name.span
    if not _template_fits(ck, b, template, source, tokenizer, span):
        return None
    if INVALID in (v.get("dtype"), v.get("allow_pickle")):
        return None
    if isinstance(source, plan.PathSource) and not v["allow_pickle"]:
        pickles = weights.pickle_only(source.dir)
        if pickles:
            ck.err("pickle-weights", f"the model folder {templates.shown(source.dir)} holds pickle weights "
                   f"only ({', '.join(pickles)})", c.nodes["from"].value.span, "no safetensors here",
                   help="unpickling a file can run code, so pickle weights are not read by default: convert "
                        "them to safetensors, or set `allow_pickle = true` in this model to read them once "
                        "and store them as safetensors")
            return None
    return plan.ModelPlan(name=b.qualified, source=source, tokenizer=tokenizer, template=template,
                          dtype=v["dtype"], origin=ck.origin(b), allow_pickle=v["allow_pickle"])


def _pinned(ck: Checker, source: plan.HubSource, span: Span) -> plan.HubSource:
    """A hub model with the commit and files its lock entry pins (formula/contract/hublock.py).
    No lock file: unpinned, and `formula build` pins it. A lock without this model: stale."""
    path = hublock.lock_path(ck.program.root.path)
    try:
        pins = hublock.read(path)
    except hublock.LockError as exc:
        ck.err("bad-lock", str(exc), span, "this hub model is pinned there",
               help="`formula lock FORMULA` writes the lock file again")
        return source
    pin = pins.get((source.id, source.revision)) if pins is not None else None
    if pin is None:
        if pins is not None:
            ck.diags.append(warning(
                "stale-lock", f"`{source.id}` at `{source.revision}` is not pinned in "
                f"{templates.shown(path)}", span, "not in the lock file",
                help="`formula lock FORMULA` pins it to a commit (`formula build` does too, and says so)"))
        return source
    return replace(source, commit=pin.commit, files=pin.names, sha256=pin.sha256sums)


def _template_fits(ck: Checker, b: BlockDef, template: plan.Template, source: plan.ModelSource,
                   tokenizer: plan.TokenizerSource, span: Span) -> bool:
    """Template against tokenizer, where both can be known without building: a named
    template, a template file, and a tokenizer in a local folder or made by `train_bpe`."""
    text: str | None
    if isinstance(template, plan.FileTemplate):
        try:
            with open(template.path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            ck.err("template-file", f"cannot read the chat template {templates.shown(template.path)}: "
                   f"{exc.strerror or exc}", span, "this file", help="check the path (relative to the formula)")
            return False
        if isinstance(tokenizer, plan.TrainedTokenizer):
            ck.err("template-trained-tokenizer", "a tokenizer made by `train_bpe` knows the special "
                   "tokens of a named template only", span, "a template file",
                   help="use `template = chatml` or `template = llama3` with `train_bpe`")
            return False
    elif template.name in templates.NAMED:
        text = templates.NAMED[template.name]
    else:
        text = None
    folder = (tokenizer.dir if isinstance(tokenizer, plan.PathSource) else
              source.dir if isinstance(tokenizer, plan.OwnTokenizer) and isinstance(source, plan.PathSource)
              else None)
    tok = templates.local_tokenizer(folder) if folder else None
    if text is None:  # `own`: the base model's, readable when the model is local
        text = tok.template if tok else None
        if text is None:
            return True
    ok = True
    if not isinstance(template, plan.NamedTemplate) or template.name not in templates.NAMED:
        file = (template.path if isinstance(template, plan.FileTemplate) else
                os.path.join(folder, "chat_template.jinja") if folder and os.path.isfile(
                    os.path.join(folder, "chat_template.jinja")) else None)
        where = templates.shown(file or os.path.join(str(folder), "tokenizer_config.json"))
        ok = _renders(ck, text, file, where, span)
    for code, message, help_ in templates.problems(templates.analyse(text), tok, _masks(ck)):
        ck.err(code, message, span, "this template", help=help_)
        ok = False
    keeping = _keeps_thinking(ck)
    if keeping and "reasoning_content" not in text:
        ck.diags.append(warning(
            "thinking-not-rendered", f"corpus `{keeping}` keeps thinking blocks, but this chat template "
            "never renders `reasoning_content`", span, "this template",
            help="the model will not see or learn the thinking: use a template that renders "
                 "`reasoning_content` (a file template), or `thinking = drop`"))
    return ok


RENDER_HELP = {
    "template-syntax": "fix the template; see https://jinja.palletsprojects.com/en/stable/templates/",
    "template-unsafe": "chat templates run in Jinja's immutable sandbox, as transformers runs them: "
                       "a template may read its messages and the special tokens, never Python objects' "
                       "internals or methods that change a value",
    "template-render": "`formula check` renders it with one user turn and one assistant turn; the "
                       "tokenize step will fail the same way on any session of that shape",
}


def _renders(ck: Checker, text: str, file: str | None, where: str, span: Span) -> bool:
    """The template rendered with sample conversations in Jinja's sandbox (`render_problem`):
    a diagnostic at its line in the template file when it is one, else at the formula. A
    template that fails on the plain sample is a warning (it may reject such a chat on purpose,
    for corpora that never hold one); one that does not parse or that the sandbox refuses is an
    error."""
    problem = templates.render_problem(text)
    if problem is None:
        return True

    def report(*args: Any, **kw: Any) -> None:
        if problem.code == "template-render":
            ck.diags.append(warning(*args, **kw))
        else:
            ck.err(*args, **kw)

    if file and problem.line:
        src = Source(where, text)
        line_text = src.line_text(problem.line)
        start = sum(len(x) + 1 for x in text.split("\n")[: problem.line - 1])
        indent = len(line_text) - len(line_text.lstrip())
        report(problem.code, f"the chat template {problem.describe()}",
               src.span(start + indent, start + max(len(line_text), indent + 1)), "here",
               labels=[Label(span, "template read from here")], help=RENDER_HELP[problem.code])
    else:
        at = f", line {problem.line}" if problem.line else ""
        report(problem.code, f"the chat template ({where}{at}) {problem.describe()}", span, "this template",
               help=RENDER_HELP[problem.code])
    return problem.code == "template-render"


def _keeps_thinking(ck: Checker) -> str | None:
    """The first corpus whose Claude Code sources keep thinking blocks, if any."""
    for c in ck.checked.values():
        if c.block.kind.name != "corpus":
            continue
        src = c.values.get("source")
        for f in src if isinstance(src, tuple) else (src,):
            if isinstance(f, FuncValue) and f.args.get("thinking") == "keep":
                return c.block.name.name
    return None


def _masks(ck: Checker) -> bool:
    """Whether a stage of the formula keeps the loss on assistant turns only (each method says
    from its options; a formula without stages is held to it too)."""
    stages = [c for c in ck.checked.values() if c.block.kind.name == "stage"]
    return not stages or any(_stage_masks(c.values) for c in stages)


def _stage_masks(values: dict[str, Any]) -> bool:
    method = METHODS.get(values.get("method"))  # type: ignore[arg-type]
    if method is None:
        return True
    return method.masks(method.options({k: v for k, v in values.items() if v is not INVALID}))

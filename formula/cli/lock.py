"""`formula lock`: pin each hub model a formula names to a commit (formula/contract/hublock.py).

    formula lock F              pin what the lock file lacks; keep every pin it has
    formula lock F --upgrade    move every pin to what its revision names now

`formula build` pins what the lock lacks the same way before it builds, and says so.
"""

from __future__ import annotations

import argparse
import sys

from formula.cli.common import EXIT_ERRORS, EXIT_OK, EXIT_USAGE
from formula.contract import hublock
from formula.contract.steps import HubSource


def hub_models(steps) -> set[tuple[str, str]]:
    """(repository, revision) of every hub model and hub tokenizer in these step configs."""
    out = set()
    for spec in steps:
        if spec.kind != "model":
            continue
        for field in ("source", "tokenizer"):
            src = spec.config.get(field)
            if isinstance(src, dict) and src.get("type") == "hub_source":
                out.add((src["id"], src.get("revision", "main")))
    return out


def unpinned(graph) -> bool:
    return any(isinstance(s.config.get(f), dict) and s.config[f].get("type") == "hub_source"
               and not s.config[f].get("commit") for s in graph.steps.values() if s.kind == "model"
               for f in ("source", "tokenizer"))


def update(formula: str, wanted: set[tuple[str, str]], upgrade: bool, prune: bool, who: str) -> bool:
    """Resolve what the lock lacks (or everything, upgrading), write it, say what moved.
    False after saying why it could not."""
    from formula.runtime import hub

    path = hublock.lock_path(formula)
    try:
        pins = hublock.read(path) or {}
    except hublock.LockError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return False
    new = {k: p for k, p in pins.items() if k in wanted or not prune}
    for key in sorted(wanted):
        old = pins.get(key)
        if old is not None and not upgrade:
            continue
        try:
            pin, pickle = hub.resolve(*key)
        except hub.HubError as exc:
            print(f"{who}: {exc}", file=sys.stderr)
            return False
        new[key] = pin
        name = f"{key[0]}@{key[1]}"
        if old is None:
            print(f"{who}: pinned {name} to {pin.commit} ({len(pin.files)} files, {_size(pin.size)})"
                  + (" from the Hugging Face cache (HF_HUB_OFFLINE)" if hub.offline() else ""), file=sys.stderr)
        elif old.commit != pin.commit:
            print(f"{who}: moved {name} from {old.commit} to {pin.commit}", file=sys.stderr)
        else:
            print(f"{who}: {name} is still {pin.commit}", file=sys.stderr)
        if pickle:
            print(f"{who}: warning: {name} has no safetensors weights, only pickle files "
                  f"({', '.join(n for n in pin.names if hublock.is_weights(n))}); the model step reads them only "
                  "with `allow_pickle = true`", file=sys.stderr)
    for key in sorted(set(pins) - set(new)):
        print(f"{who}: dropped {key[0]}@{key[1]} (the formula no longer names it)", file=sys.stderr)
    if new != pins:
        try:
            hublock.write(path, new)
        except OSError as exc:
            print(f"{who}: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            return False
        print(f"{who}: wrote {path}; commit it beside the formula", file=sys.stderr)
    return True


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def cmd_lock(ns: argparse.Namespace) -> int:
    import os

    from formula.compiler.diagnostics import render_text, summary_line
    from formula.compiler.pipeline import compile_formula

    if ns.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if not os.path.isfile(ns.formula):
        print(f"formula lock: no such formula: {ns.formula}", file=sys.stderr)
        return EXIT_USAGE
    path = hublock.lock_path(ns.formula)
    try:
        hublock.read(path)
    except hublock.LockError as exc:  # written again from nothing
        print(f"formula lock: {exc}; writing it again", file=sys.stderr)
        os.unlink(path)
    result = compile_formula(ns.formula)
    errors = [d for d in result.diagnostics if d.is_error]
    if errors or result.plan is None:
        print(render_text(errors) + "\n", file=sys.stderr)
        print(f"formula lock: {ns.formula} has {summary_line(errors)}; nothing was pinned", file=sys.stderr)
        return EXIT_ERRORS
    wanted = {(m.id, m.revision) for p in result.plan.models.values() for m in (p.source, p.tokenizer)
              if isinstance(m, HubSource)}
    if not wanted:
        print(f"formula lock: {ns.formula} names no hub model; nothing to pin", file=sys.stderr)
    return EXIT_OK if update(ns.formula, wanted, ns.upgrade, prune=True, who="formula lock") else EXIT_ERRORS


def add_command(sub) -> None:
    p = sub.add_parser("lock", help="pin each hub model to a commit in FORMULA.lock",
                       description="Resolve each hub model's revision (branch or tag) to a commit and "
                                   "write it, with the files the model needs, to the lock file beside "
                                   "the formula (FORMULA.lock), which builds use. Pins already there "
                                   "are kept unless --upgrade.")
    p.add_argument("formula")
    p.add_argument("--upgrade", action="store_true",
                   help="move every pin to the commit its revision names now")
    p.add_argument("--offline", action="store_true",
                   help="resolve from the Hugging Face cache only (as HF_HUB_OFFLINE=1)")
    p.set_defaults(func=cmd_lock)

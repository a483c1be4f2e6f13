"""`formula`: check, format and (later) build training formulas.

Heavy modules are imported inside the commands that need them, so `formula --help` and
`formula check` stay fast and never import torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from formula.cli.common import EXIT_ERRORS, EXIT_OK, EXIT_USAGE, use_color

SUFFIX = ".formula"


def _formula_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """Files named on the command line, and `*.formula` files under named folders."""
    files: list[str] = []
    missing: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(str(f) for f in sorted(path.rglob(f"*{SUFFIX}"))
                         if not any(part.startswith(".") for part in f.parts[len(path.parts):]))
        elif path.is_file():
            files.append(str(path))
        else:
            missing.append(p)
    return files, missing


def _split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Paths and Hydra-style overrides (`key=value`, `~key`, `+key=value`) in one list."""
    paths, overrides = [], []
    for a in args:
        if ("=" in a or a.startswith("~")) and not os.path.exists(a):
            overrides.append(a)
        else:
            paths.append(a)
    return paths, overrides


def cmd_check(ns: argparse.Namespace) -> int:
    from formula.compiler.diagnostics import render_github, render_json, render_text, summary_line
    from formula.compiler.pipeline import compile_formula, unique as unique_diagnostics

    paths, overrides = _split_args(ns.paths)
    if overrides and not paths:
        print(f"formula check: name the formula the overrides apply to: formula check FILE "
              f"{' '.join(overrides)}", file=sys.stderr)
        return EXIT_USAGE
    files, missing = _formula_files(paths)
    if missing:
        for m in missing:
            print(f"formula check: no such file or folder: {m}", file=sys.stderr)
        return EXIT_USAGE
    if not files:
        print(f"formula check: no {SUFFIX} files under {' '.join(paths)}", file=sys.stderr)
        return EXIT_USAGE
    if overrides and len(files) > 1:
        print("formula check: overrides apply to one formula; name a single file", file=sys.stderr)
        return EXIT_USAGE
    diagnostics: list = []
    for f in files:
        diagnostics.extend(compile_formula(f, overrides).diagnostics)
    # A library checked alone and again through its importers reports the same thing twice.
    unique = list(unique_diagnostics(diagnostics))
    errors = sum(d.is_error for d in unique)
    if ns.format == "json":
        import json

        # Like `go vet -json` or `terraform validate -json`: the diagnostics and a summary.
        print(json.dumps({"summary": {"files": len(files), "errors": errors,
                                      "warnings": len(unique) - errors},
                          "diagnostics": json.loads(render_json(unique))}, indent=2))
    elif ns.format == "github":
        if unique:
            print(render_github(unique))
    elif unique:
        print(render_text(unique, color=use_color(sys.stderr)) + "\n", file=sys.stderr)
    if ns.format == "text":
        tail = summary_line(unique)
        n = len(files)
        print(f"checked {n} formula{'s' if n != 1 else ''}" + (f": {tail}" if tail else ": ok"),
              file=sys.stderr)
    return EXIT_ERRORS if errors else EXIT_OK


def cmd_fmt(ns: argparse.Namespace) -> int:
    from formula.compiler.diagnostics import render_text
    from formula.compiler.format import format_bytes

    files, missing = _formula_files(ns.paths)
    if missing:
        for m in missing:
            print(f"formula fmt: no such file or folder: {m}", file=sys.stderr)
        return EXIT_USAGE
    changed, failed = [], False
    for f in files:
        try:
            data = Path(f).read_bytes()
            formatted, diags = format_bytes(f, data)
        except OSError as exc:
            print(f"formula fmt: cannot read {f}: {exc.strerror or exc}", file=sys.stderr)
            failed = True
            continue
        except (RecursionError, MemoryError, Exception) as exc:  # noqa: BLE001 - one file's crash
            if os.environ.get("FORMULA_DEBUG"):
                raise
            print(f"formula fmt: {f}: internal error ({type(exc).__name__}: {exc}); this is a bug "
                  "in formula, please report it with the file", file=sys.stderr)
            failed = True
            continue
        if formatted is None:
            print(render_text(diags, color=use_color(sys.stderr)) + "\n", file=sys.stderr)
            failed = True
            continue
        if formatted.encode("utf-8") != data:
            changed.append(f)
            if not ns.check:
                tmp = Path(f + ".fmt-tmp")
                tmp.write_text(formatted, encoding="utf-8")
                os.replace(tmp, f)
    verb = "would reformat" if ns.check else "reformatted"
    for f in changed:
        print(f"{verb} {f}", file=sys.stderr)
    print(f"{len(files)} file{'s' if len(files) != 1 else ''}: {len(changed)} {verb}"
          + (", some could not be parsed" if failed else ""), file=sys.stderr)
    if failed or (ns.check and changed):
        return EXIT_ERRORS
    return EXIT_OK


def cmd_lsp(ns: argparse.Namespace) -> int:
    try:
        from formula.cli.lsp import serve
    except ImportError as exc:
        print(f"formula lsp: the language server needs pygls ({exc}): pip install 'formula[lsp]'",
              file=sys.stderr)
        return EXIT_USAGE
    serve()
    return EXIT_OK


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="formula",
        description="Compile training formulas into fine-tuned models for Gas Town's agent roles.")
    parser.add_argument("--version", action="version", version="formula 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("check", help="validate formulas without building anything",
                       description="Validate formulas (files or folders, recursively). Exit 0 "
                                   "when clean, 1 on errors, 2 on usage mistakes. Overrides in "
                                   "Hydra syntax (stage.sft.lr=1e-4 var.rank=32) apply to a "
                                   "single formula.")
    p.add_argument("paths", nargs="+", metavar="PATH_OR_OVERRIDE")
    p.add_argument("--format", choices=("text", "json", "github"), default="text",
                   help="text (default), json, or GitHub workflow annotations")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("fmt", help="rewrite formulas in the canonical layout",
                       description="Rewrite formulas in the canonical layout, keeping comments.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--check", action="store_true",
                   help="change nothing; exit 1 if any file would be reformatted")
    p.set_defaults(func=cmd_fmt)
    p = sub.add_parser("lsp", help="run the language server (stdio; needs `pip install formula[lsp]`)",
                       description="A Language Server Protocol server on stdin/stdout: diagnostics "
                                   "as you type, hover, completion, go to definition, formatting.")
    p.set_defaults(func=cmd_lsp)
    if _wants_build_commands(sys.argv[1:] if argv is None else argv):
        from formula.cli.build_commands import add_commands

        add_commands(sub)
    return parser


def _wants_build_commands(argv: list[str]) -> bool:
    """The build commands are registered unless the command is `check`, `fmt` or `lsp`, so
    those never import the runtime."""
    args = [a for a in argv if not a.startswith("-")]
    return not args or args[0] not in ("check", "fmt", "lsp")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    ns, extra = parser.parse_known_args(argv)
    # Overrides may follow options (`build F -j 2 stage.sft.lr=1e-4`), which argparse does not
    # take as positionals; anything else left over is a usage mistake.
    if extra and hasattr(ns, "overrides") and all("=" in a or a.startswith("~") for a in extra):
        ns.overrides = list(ns.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(ns, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return ns.func(ns)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM during a build
        import signal

        name = getattr(exc, "signame", "SIGINT")
        print(f"formula: interrupted ({name})", file=sys.stderr)
        return 128 + getattr(signal.Signals, name, signal.SIGINT).value
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""`formula plan | build | explain | graph | ls | show | tag | gc | verify`.

Imported only when one of these commands runs; compiling never imports torch either way.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from formula.cli.common import EXIT_ERRORS, EXIT_OK, EXIT_USAGE
from formula.cli.common import use_color as _use_color


class _PlanName:
    def __init__(self, name: str):
        self.name = name


def _compile(formula: str, overrides: list[str]):
    """(something with the plan's `name`, the step graph), or (None, None) after printing the
    diagnostics. An unchanged formula comes from the compile cache without compiling."""
    from formula.cli import compile_cache
    from formula.runtime.store import default_root

    if not Path(formula).is_file():
        print(f"formula: no such formula: {formula}", file=sys.stderr)
        return None, None
    store_root = default_root(formula)
    cached = compile_cache.load(store_root, formula, list(overrides))
    if cached is not None:
        name, graph, warnings = cached
        if warnings:
            print(warnings, file=sys.stderr)
        return _PlanName(name), graph

    from formula.compiler.diagnostics import render_text, summary_line
    from formula.compiler.lower import lower
    from formula.compiler.pipeline import compile_formula
    from formula.compiler.resolve import read_file

    read: list[str] = []

    def recording_read(path: str):
        read.append(path)
        return read_file(path)

    result = compile_formula(formula, overrides, read=recording_read)
    from formula.contract.hublock import lock_path

    read.append(lock_path(formula))  # its pins are in the step configs
    rendered = render_text(list(result.diagnostics)) + "\n" if result.diagnostics else ""
    if result.diagnostics:
        print(render_text(list(result.diagnostics), color=_use_color(sys.stderr)) + "\n", file=sys.stderr)
    if not result.ok or result.plan is None:
        print(f"formula: {formula} has {summary_line(list(result.diagnostics))}; nothing was built",
              file=sys.stderr)
        return None, None
    graph = lower(result.plan)
    if os.environ.get("FORMULA_HOME") or store_root.exists():
        try:
            compile_cache.save(store_root, formula, list(overrides), read, result.plan.name, graph, rendered)
        except OSError:
            pass  # a read-only or full store: compiled again next time, and the build says why
    return result.plan, graph


def _store(formula: str | None, explicit: str | None):
    from formula.runtime.store import Store, StoreError, default_root, project_root

    if explicit:
        root = Path(explicit)
    elif formula:
        root = default_root(formula)
    elif os.environ.get("FORMULA_HOME"):
        root = Path(os.environ["FORMULA_HOME"]).expanduser()
    else:
        root = project_root(Path.cwd()) / ".formula"
    try:
        return Store(root)
    except StoreError as exc:
        print(f"formula: {exc}", file=sys.stderr)
        return None


def _select(graph, names: list[str], flag: str):
    found, unmatched = graph.select(names)
    for u in unmatched:
        from formula.compiler.diagnostics import did_you_mean

        hint = did_you_mean(u, graph.steps)
        print(f"formula: {flag} {u}: no such step" + (f"; {hint}" if hint else "") +
              f" (steps: {', '.join(graph.order())})", file=sys.stderr)
    return found, bool(unmatched)


def _prepare(ns, overrides: list[str]):
    """(plan, graph, store, forced steps, only steps), or an exit status after saying why."""
    plan_, graph = _compile(ns.formula, overrides)
    if graph is None:
        return EXIT_ERRORS
    store = _store(ns.formula, ns.store)
    if store is None:
        return EXIT_USAGE
    force, bad = _select(graph, ns.force or [], "--force")
    only, bad2 = _select(graph, ns.only or [], "--only") if ns.only else (None, False)
    if bad or bad2:
        return EXIT_USAGE
    return plan_, graph, store, force, only


def cmd_plan(ns: argparse.Namespace) -> int:
    from formula.runtime.build import Builder
    from formula.runtime.explain import plan

    prepared = _prepare(ns, ns.overrides)
    if isinstance(prepared, int):
        return prepared
    plan_, graph, store, force, only = prepared
    rows = plan(Builder(graph, store, ns.formula), graph, store, ns.formula, force, only)
    width = max((len(r.step) for r in rows), default=0)  # a formula may declare no steps
    memory = _memory_lines(graph, store, rows)
    for r in rows:
        mark = {"cached": "cached  ", "run": "will run", "after": "will run"}[r.status]
        print(f"{mark}  {r.step:<{width}}" + (f"  {r.reasons[0]}" if r.reasons else ""))
        for extra in r.reasons[1:] + memory.get(r.step, []):
            print(f"{'':10}{'':<{width}}  {extra}")
    n_run = sum(r.status != "cached" for r in rows)
    print(f"{len(rows) - n_run} cached, {n_run} to run", file=sys.stderr)
    return EXIT_OK


def _memory_lines(graph, store, rows) -> dict[str, list[str]]:
    """Each train step's estimated peak memory and the device it will run on
    (formula/runtime/memory.py: no torch, config.json only)."""
    from formula.runtime import memory

    keys = {r.step: r.key for r in rows if r.status == "cached"}
    devices: dict[str, memory.Device] = {}

    def output_of(step: str) -> Path | None:
        record = store.action(keys[step]) if step in keys else None
        return store.object_path(record["output"]) if record else None

    def device_of(requested: str) -> memory.Device:
        if requested not in devices:
            devices[requested] = memory.probe_device(requested)
        return devices[requested]

    out = {}
    for r in rows:
        if graph.steps[r.step].kind == "train":
            try:
                out[r.step] = memory.plan_step(graph.steps, r.step, output_of, device_of).lines()
            except ValueError as exc:  # FORMULA_MEMORY_LIMIT that is not a size
                out[r.step] = [f"memory: {exc}"]
    return out


def _build_one(ns, overrides: list[str], progress_factory) -> int:
    from formula.runtime.build import Builder
    from formula.runtime.progress import PlainProgress

    from formula.cli import lock

    if ns.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub here and in every step
    prepared = _prepare(ns, overrides)
    if isinstance(prepared, int):
        return prepared
    if lock.unpinned(prepared[1]):  # like cargo: a build pins what the lock file lacks, and says so
        if not lock.update(ns.formula, lock.hub_models(prepared[1].steps.values()), upgrade=False,
                           prune=False, who="formula build"):
            return EXIT_ERRORS
        prepared = _prepare(ns, overrides)
        if isinstance(prepared, int):
            return prepared
    plan_, graph, store, force, only = prepared
    steps = [n for n in graph.order() if not only or n in graph.closure(only)]
    missing = Builder(graph, store, ns.formula).missing_implementations(set(steps))
    if missing:
        print("formula build: no implementation for step kind" + ("s " if len(missing) > 1 else " ")
              + ", ".join(f"`{k}` (module {m})" for k, m in missing.items())
              + "; nothing was run. The runtime implements the build machinery; the corpus, "
              "training, export and eval steps land with their own issues (see README).",
              file=sys.stderr)
        return EXIT_ERRORS
    from formula.runtime import tracking

    try:
        tracking_env = tracking.build_env(tracking.parse(ns.report_to), store.root, plan_.name)
    except tracking.TrackingError as exc:
        print(f"formula build: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from formula.runtime.cluster import ExecutorError, make_executor

    try:  # a cluster executor: submitit or Ray, imported only now
        executor = make_executor(ns.executor, store.root, connect=True)
    except ExecutorError as exc:
        print(f"formula build: --executor {ns.executor}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from formula.cli import remote_commands

    url = remote_commands.remote_url(ns)  # the shared cache, consulted before a step runs
    remote = remote_commands.open_remote(url, store, "build", create=ns.push) if url else None
    if url and remote is None:
        return EXIT_ERRORS
    if ns.push and remote is None:
        print(f"formula build: --push needs --remote URL or ${remote_commands.REMOTE_ENV}", file=sys.stderr)
        return EXIT_USAGE
    started = time.time()
    progress, ctx = progress_factory(steps)
    builder = Builder(graph, store, ns.formula, executor=executor, jobs=ns.jobs, progress=progress,
                      env=tracking_env, remote=remote)
    with ctx:
        result = builder.build(only=only, force=force, overrides=tuple(overrides), plan_name=plan_.name)
    _summary(result, time.time() - started, live=not isinstance(progress, PlainProgress))
    pushed = remote_commands.after_build(remote, store, ns.formula, ns.push and not result.interrupted)
    if result.interrupted:
        return 128 + getattr(signal.Signals, result.interrupted, signal.SIGINT).value
    from formula.cli.report import write_report

    build = store.latest(ns.formula)
    if build and build.get("steps"):
        try:
            print(f"report: {write_report(store, build)}", file=sys.stderr)
        except OSError as exc:
            from formula.runtime.step import describe_os_error

            print("formula: the build report could not be written: "
                  + describe_os_error(exc, exc.filename or store.root / "reports"), file=sys.stderr)
    return EXIT_OK if result.ok and pushed == EXIT_OK else EXIT_ERRORS


def _log_tail(o) -> None:
    """The end of a failed step's log, or of what it printed when the log is incomplete."""
    if o.tail:
        lines, where = o.tail.splitlines()[-30:], f"what {o.step} printed (its log {o.log} is incomplete)"
    elif o.log and Path(o.log).exists():
        lines, where = Path(o.log).read_text(errors="replace").splitlines()[-30:], o.log
    else:
        return
    lines = [l for l in lines if not l.startswith("[formula] step ")]  # the reason, said above
    if not any(l.strip() for l in lines):
        print(f"(the log {o.log} is empty: the step printed nothing before it ended)", file=sys.stderr)
        return
    print(f"--- last lines of {where}", file=sys.stderr)
    print("\n".join(lines), file=sys.stderr)
    print("---", file=sys.stderr)


def _summary(result, seconds: float, live: bool = False) -> None:
    from formula.runtime.build import BUILT, CACHED, FAILED, INTERRUPTED, REUSED, SKIPPED

    counts: dict[str, int] = {}
    for o in result.outcomes.values():
        counts[o.state] = counts.get(o.state, 0) + 1
    for o in result.outcomes.values():
        for note in o.notes:
            print(f"note: {o.step}: {note}", file=sys.stderr)
        if o.state != FAILED:
            continue
        print(f"\nstep {o.step} failed: {o.error}", file=sys.stderr)
        _log_tail(o)
        if o.rerun:
            print(f"run it alone: {o.rerun}", file=sys.stderr)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    _table(result, live)
    for o in result.outcomes.values():
        for c in o.failed_checks:
            print(f"check failed in {o.step}: {c.get('check')}" + (f" — {c['detail']}" if c.get("detail") else ""),
                  file=sys.stderr)
        if o.failed_checks:
            print(f"  report: {o.step}'s output (`formula show` with its key {o.key[:12]})", file=sys.stderr)
    order = (BUILT, REUSED, CACHED, FAILED, INTERRUPTED, SKIPPED)
    parts = [f"{counts[s]} {s}" for s in order if counts.get(s)]
    if result.interrupted:
        _interrupted(result, seconds)
        return
    print(f"{'build ok' if result.ok else 'build failed'}: {', '.join(parts) or 'nothing to do'} "
          f"in {seconds:.2f}s", file=sys.stderr)


def _interrupted(result, seconds: float) -> None:
    """What an interrupted build kept: finished steps stored, stopped steps' checkpoints."""
    from formula.runtime.build import BUILT, CACHED, INTERRUPTED, REUSED

    done = [o.step for o in result.outcomes.values() if o.state in (BUILT, REUSED, CACHED)]
    built = [o.step for o in result.outcomes.values() if o.state in (BUILT, REUSED)]
    stopped = [o for o in result.outcomes.values() if o.state == INTERRUPTED]
    print(f"build interrupted ({result.interrupted}) after {seconds:.2f}s: kept {len(done)} finished "
          f"step{'s' if len(done) != 1 else ''} in the store ({len(built)} built now), cached for the "
          "next build; nothing half-written was stored", file=sys.stderr)
    for o in stopped:
        print(f"  stopped {o.step}: kept {o.kept}", file=sys.stderr)
    left = [o.step for o in result.outcomes.values() if o.state not in (BUILT, REUSED, CACHED, INTERRUPTED)]
    if left:
        print(f"  not built: {', '.join(left)}", file=sys.stderr)


def _table(result, live: bool) -> None:
    """The summary table: every step, what happened to it, how long it took."""
    if not live:
        rows = [(o.step, o.state, f"{o.seconds:.1f}s" if o.seconds else "", o.output[:12])
                for o in result.outcomes.values()]
        w = max((len(r[0]) for r in rows), default=4)
        for r in [("step", "state", "time", "output")] + rows:
            print(f"  {r[0]:<{w}}  {r[1]:<8} {r[2]:>7}  {r[3]}", file=sys.stderr)
        return
    from rich.console import Console
    from rich.table import Table

    from formula.runtime.progress import STYLE

    console = Console(stderr=True, no_color="NO_COLOR" in os.environ, width=100)
    table = Table(box=None, padding=(0, 2), header_style="bold")
    for col in ("step", "state", "time", "output"):
        table.add_column(col, justify="right" if col == "time" else "left")
    for o in result.outcomes.values():
        table.add_row(o.step, f"[{STYLE.get(o.state, '')}]{o.state}[/]",
                      f"{o.seconds:.1f}s" if o.seconds else "", o.output[:12])
    console.print(table)


def _on_sigterm(signum, frame):
    from formula.runtime.build import Interrupted

    raise Interrupted("SIGTERM")


def cmd_build(ns: argparse.Namespace) -> int:
    # SIGTERM stops a build the way Ctrl-C does: steps stopped, finished ones kept, said so.
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _cmd_build(ns)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_build(ns: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from formula.runtime.progress import LiveProgress, PlainProgress

    def factory(steps):
        if sys.stderr.isatty() and not ns.plain:
            live = LiveProgress(steps)
            return live, live
        return PlainProgress(), nullcontext()

    if not ns.multirun:
        return _build_one(ns, ns.overrides, factory)
    from formula.compiler.diagnostics import render_text
    from formula.compiler.overrides import split_sweeps

    combos, diags = split_sweeps(ns.overrides)
    if diags:
        print(render_text(diags) + "\n", file=sys.stderr)
        return EXIT_ERRORS
    status = EXIT_OK
    for i, combo in enumerate(combos):
        print(f"[{i + 1}/{len(combos)}] {' '.join(combo) or '(no overrides)'}", file=sys.stderr)
        one = _build_one(ns, combo, factory)
        if one > 128:  # interrupted: the remaining combinations are not started
            return one
        status = max(status, one)
    return status


def cmd_explain(ns: argparse.Namespace) -> int:
    from formula.runtime.build import Builder
    from formula.runtime.executor import Task
    from formula.runtime.explain import plan
    from formula.runtime.steps import module_for

    plan_, graph = _compile(ns.formula, ns.overrides)
    if graph is None:
        return EXIT_ERRORS
    found, bad = _select(graph, [ns.step], "step")
    if bad:
        return EXIT_USAGE
    store = _store(ns.formula, ns.store)
    if store is None:
        return EXIT_USAGE
    rows = {r.step: r for r in plan(Builder(graph, store, ns.formula), graph, store, ns.formula)}
    for name in sorted(found):
        spec = graph.steps[name]
        row = rows[name]
        print(f"step {name}  ({spec.kind}, from {spec.origin})")
        print(f"  module   {module_for(spec.kind)}")
        print(f"  inputs   " + (", ".join(f"{k} ← {v}" for k, v in sorted(spec.deps.items())) or "none"))
        for k, fi in sorted(spec.files.items()):
            print(f"           {k} ← {fi.pattern}")
        print(f"  status   {'cached' if row.status == 'cached' else 'will run'}"
              + (f" (key {row.key[:16]}…)" if row.key else ""))
        for r in row.reasons:
            print(f"           {r}")
        record = store.action(row.key) if row.key else None
        if record:
            print(f"  output   {record['output']}")
            print(f"  built    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record['started']))}"
                  f" in {record['seconds']}s; log {record['log']}")
        print("  config")
        print("    " + json.dumps(spec.config, indent=2, sort_keys=True).replace("\n", "\n    "))
    return EXIT_OK


def cmd_graph(ns: argparse.Namespace) -> int:
    plan_, graph = _compile(ns.formula, ns.overrides)
    if graph is None:
        return EXIT_ERRORS
    print(graph.to_dot() if ns.format == "dot" else graph.to_mermaid())
    return EXIT_OK


def _resolve_ref(store, ref: str):
    """A step record from `KEY-PREFIX`, `TAG:STEP` or `FORMULA-NAME:STEP`."""
    if ":" in ref:
        head, step = ref.split(":", 1)
        builds = store.tags()
        # A formula name may be built in several projects sharing a store: the latest wins.
        build = builds.get(head) or max((b for b in store.builds() if b.get("name") == head
                                         or Path(b.get("formula", "")).stem == head),
                                        key=lambda b: b.get("time", 0), default=None)
        if build is None or step not in build.get("steps", {}):
            return None
        return store.action(build["steps"][step])
    matches = [(k, r) for k, r in store.actions() if k.startswith(ref)]
    return matches[0][1] if len(matches) == 1 else None


def cmd_ls(ns: argparse.Namespace) -> int:
    store = _store(None, ns.store)
    if store is None:
        return EXIT_USAGE
    tags = store.tags()
    for build in sorted(store.builds(), key=lambda b: b.get("time", 0)):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(build.get("time", 0)))
        tagged = [t for t, b in tags.items() if b.get("steps") == build.get("steps")]
        print(f"{build.get('name') or Path(build['formula']).stem}  {when}  "
              f"{'ok' if build.get('ok') else 'FAILED'}  {build['formula']}"
              + (f"  tags: {', '.join(tagged)}" if tagged else ""))
        for step, key in sorted(build.get("steps", {}).items()):
            record = store.action(key)
            size = _size(store.object_path(record["output"])) if record else 0
            print(f"  {step:<32} {key[:12]}  {_human(size):>9}" + ("" if record else "  (missing)"))
    return EXIT_OK


def _latest_build(ns):
    store = _store(ns.formula, ns.store)
    if store is None:
        return None, None
    build = store.latest(ns.formula)
    if not build or not build.get("steps"):
        print(f"formula: {ns.formula} has not been built in {store.root} yet; run "
              f"`formula build {ns.formula}`", file=sys.stderr)
        return store, None
    return store, build


def cmd_report(ns: argparse.Namespace) -> int:
    from formula.cli.report import write_report

    store, build = _latest_build(ns)
    if build is None:
        return EXIT_USAGE
    print(write_report(store, build))
    return EXIT_OK


def cmd_serve(ns: argparse.Namespace) -> int:
    from formula.cli.serve import artifact, choose_target, serve

    store, build = _latest_build(ns)
    if build is None:
        return EXIT_USAGE
    step, ggufs = choose_target(build["steps"], ns.target)
    if step is None:
        print(f"formula serve: " + (f"no GGUF step matches `{ns.target}`; built: {', '.join(ggufs)}"
                                    if ggufs else f"the latest build of {ns.formula} has no GGUF; "
                                    "add an `export` block and build"), file=sys.stderr)
        return EXIT_USAGE
    record = store.action(build["steps"][step])
    path = store.object_path(record["output"]) / artifact(step) if record else None
    if path is None or not path.is_file():
        print(f"formula serve: {step}'s artifact is missing from the store; build again", file=sys.stderr)
        return EXIT_ERRORS
    damage = store.damage(record["output"])
    if damage:
        print(f"formula serve: {step}'s artifact is damaged ("
              + "; ".join(f"{f}: {w}" for f, w in damage[:3]) + f"); `formula build {ns.formula}` "
              "moves it aside and builds it again", file=sys.stderr)
        return EXIT_ERRORS
    if not build.get("ok"):
        print(f"formula serve: warning: the latest build of {ns.formula} did not pass; serving "
              f"{step} as built", file=sys.stderr)
    return serve(path, ns.host, ns.port, ns.name or f"{Path(ns.formula).stem}/{step}", ns.backend)


def cmd_show(ns: argparse.Namespace) -> int:
    store = _store(None, ns.store)
    if store is None:
        return EXIT_USAGE
    record = _resolve_ref(store, ns.ref)
    if record is None:
        print(f"formula show: no artifact matches {ns.ref} (use a key prefix, FORMULA:STEP or "
              "TAG:STEP; `formula ls` lists them)", file=sys.stderr)
        return EXIT_USAGE
    c = record["components"]
    print(f"step     {record['step']} ({record['kind']})")
    print(f"key      {record['key']}")
    print(f"output   {store.object_path(record['output'])}")
    print(f"formula  {record['formula']}" + (f"  ({record['origin']})" if record.get("origin") else ""))
    print(f"built    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record['started']))} "
          f"in {record['seconds']}s")
    print(f"code     {c['impl'][:16]}…  libraries: " +
          (", ".join(f"{k} {v}" for k, v in sorted(c["libs"].items())) or "none"))
    print("inputs")
    for name, digest in sorted(c["inputs"].items()):
        lin = record.get("lineage", {}).get(name)
        src = f"from {lin['step']}" if lin else f"data, {len(record.get('files', {}).get(name, {}))} files"
        print(f"  {name:<12} {digest[:16]}…  {src}")
    if record.get("metrics"):
        print("metrics")
        for k, v in sorted(record["metrics"].items()):
            print(f"  {k:<24} {v}")
    if record.get("run"):
        print("run (facts of this run, not part of the output)")
        for k, v in sorted(record["run"].items()):
            shown = json.dumps(v) if isinstance(v, (list, dict)) else v
            print(f"  {k:<24} {str(shown)[:200]}")
    print("config")
    print("  " + json.dumps(c["config"], indent=2, sort_keys=True).replace("\n", "\n  "))
    return EXIT_OK


def cmd_tag(ns: argparse.Namespace) -> int:
    store = _store(ns.formula, ns.store)
    if store is None:
        return EXIT_USAGE
    build = store.latest(ns.formula)
    if build is None:
        print(f"formula tag: {ns.formula} has not been built in {store.root}", file=sys.stderr)
        return EXIT_USAGE
    store.tag(ns.name, build)
    print(f"tagged the latest build of {ns.formula} as {ns.name}", file=sys.stderr)
    return EXIT_OK


def cmd_gc(ns: argparse.Namespace) -> int:
    store = _store(None, ns.store)
    if store is None:
        return EXIT_USAGE
    keep = set()
    for build in list(store.builds()) + list(store.tags().values()):
        keep.update(build.get("steps", {}).values())
    actions, freed = store.gc(keep, dry_run=ns.dry_run)
    verb = "would remove" if ns.dry_run else "removed"
    print(f"{verb} {actions} step records and {_human(freed)} of outputs; kept {len(keep)} steps "
          "(tagged builds and the latest build of each formula)", file=sys.stderr)
    return EXIT_OK


def cmd_verify(ns: argparse.Namespace) -> int:
    store = _store(None, ns.store)
    if store is None:
        return EXIT_USAGE
    try:
        problems = store.verify(repair=ns.repair)
    except OSError as exc:
        from formula.runtime.step import describe_os_error

        print(f"formula verify: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_ERRORS
    for p in problems:
        print(f"{'repaired' if ns.repair else 'corrupt'}: {p}", file=sys.stderr)
    if not problems:
        print(f"verified {store.root}: clean", file=sys.stderr)
        return EXIT_OK
    if ns.repair:
        print(f"verified {store.root}: {len(problems)} problems; damaged outputs were moved to "
              f"{store.root / 'quarantine'}, and the next build rebuilds what a formula needs",
              file=sys.stderr)
        return EXIT_OK
    print(f"verified {store.root}: {len(problems)} problems; `formula verify --repair` moves damaged "
          "outputs aside (a build also does, for the outputs it uses)", file=sys.stderr)
    return EXIT_ERRORS


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def add_commands(sub) -> None:
    def formula_command(name, help_, func, step=False, overrides=True, description=None):
        p = sub.add_parser(name, help=help_, description=description or help_)
        p.add_argument("formula")
        if step:
            p.add_argument("step", help="a step name or glob, e.g. train.sft or 'gguf.*'")
        if overrides:
            p.add_argument("overrides", nargs="*", metavar="OVERRIDE",
                           help="Hydra-style overrides: stage.sft.lr=1e-4 var.rank=32")
        p.add_argument("--store", help="store folder (default: .formula/ in the project, or $FORMULA_HOME)")
        p.set_defaults(func=func)
        return p

    p = formula_command("plan", "show each step as cached or to run, and why it will run", cmd_plan)
    p.add_argument("--only", action="append", metavar="STEP")
    p.add_argument("--force", action="append", metavar="STEP")
    p = formula_command("build", "build a formula, running only the steps whose key changed", cmd_build)
    p.add_argument("--only", action="append", metavar="STEP", help="build this step and its inputs only")
    p.add_argument("--force", action="append", metavar="STEP", help="rerun this step even if cached")
    p.add_argument("-j", "--jobs", type=int, default=1, help="steps run at once (default 1)")
    p.add_argument("-m", "--multirun", action="store_true",
                   help="sweep: one build per combination of comma-separated override values")
    p.add_argument("--plain", action="store_true", help="one line per event instead of a live table")
    p.add_argument("--remote", metavar="URL", help="a shared cache (fsspec URL: folder, s3://, gs://; "
                   "default $FORMULA_REMOTE): a step it has is downloaded, not run")
    p.add_argument("--push", action="store_true", help="after the build, push it to the --remote cache")
    p.add_argument("--offline", action="store_true",
                   help="hub models from the Hugging Face cache only, at their pinned commits (as HF_HUB_OFFLINE=1)")
    p.add_argument("--report-to", default=os.environ.get("FORMULA_REPORT_TO", "none"), metavar="TRACKERS",
                   help="send training metrics to these trackers too (comma-separated: mlflow, "
                        "tensorboard, trackio, wandb, ...; default none, or $FORMULA_REPORT_TO); "
                        "changes no step key")
    p.add_argument("--executor", default=os.environ.get("FORMULA_EXECUTOR", "local"), metavar="WHERE",
                   help="where steps run: local (default, or $FORMULA_EXECUTOR), submitit (Slurm if "
                        "there is one, else submitit's local executor), submitit:local, slurm, ray, "
                        "ray:ADDRESS or ray://HOST:PORT; the store must be on a filesystem the "
                        "workers share; changes no step key")
    formula_command("explain", "everything about one step: inputs, key, why it runs, config",
                    cmd_explain, step=True)
    p = formula_command("graph", "print the step graph", cmd_graph)
    p.add_argument("--format", choices=("dot", "mermaid"), default="dot")
    for name, help_, func in (("ls", "list builds and their artifacts", cmd_ls),
                              ("verify", "rehash the store and report corruption", cmd_verify)):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--store")
        p.set_defaults(func=func)
    p.add_argument("--repair", action="store_true",
                   help="move damaged outputs to the store's quarantine, so the next build rebuilds them")
    p = formula_command("serve", "serve a built GGUF over the OpenAI API (llama.cpp)", cmd_serve,
                        overrides=False, description="Serve the latest build's GGUF through llama.cpp's "
                        "llama-server with the chat template embedded in it: OpenAI chat completions "
                        "with tool calls, and the Anthropic Messages API (docs/serve.md). The first run "
                        "builds llama-server once if it is not on PATH or in $FORMULA_LLAMA_SERVER.")
    p.add_argument("--target", help="a GGUF step or its quant (default: the most compressed)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="the model name clients see (default: FORMULA/STEP, e.g. tiny/gguf.gguf.q8_0)")
    p.add_argument("--backend", help="llama-server (default) or llama-cpp-python (nothing to build, "
                   "but tool calls only when a request forces one)")
    formula_command("report", "write the latest build's report and print its path", cmd_report,
                    overrides=False, description="Write the Markdown report of the latest build "
                    "(steps, checks, curves) and print its path.")
    from formula.cli.data import add_command as add_data_command
    from formula.cli.lock import add_command as add_lock_command

    add_lock_command(sub)

    add_data_command(sub, _compile)
    from formula.cli.remote_commands import add_commands as add_remote_commands

    add_remote_commands(sub, _compile, _store)
    p = sub.add_parser("show", help="one artifact with its lineage", description="Show one artifact: "
                       "REF is a key prefix, FORMULA:STEP or TAG:STEP.")
    p.add_argument("ref")
    p.add_argument("--store")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("tag", help="name the latest build of a formula (gc keeps it)")
    p.add_argument("name")
    p.add_argument("formula")
    p.add_argument("--store")
    p.set_defaults(func=cmd_tag)
    p = sub.add_parser("gc", help="delete what no tag and no latest build reaches")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--store")
    p.set_defaults(func=cmd_gc)

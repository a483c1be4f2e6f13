"""`formula push | pull`, and the shared cache of `formula build --remote` (formula/runtime/remote.py).

The remote is `--remote URL`, else $FORMULA_REMOTE. A pushed build is named on the remote by its
formula's name (`formula NAME { ... }`), so another machine pulls it from its own checkout.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from formula.cli.common import EXIT_ERRORS, EXIT_OK, EXIT_USAGE

REMOTE_ENV = "FORMULA_REMOTE"


def remote_url(ns: argparse.Namespace) -> str:
    return getattr(ns, "remote", None) or os.environ.get(REMOTE_ENV, "")


def open_remote(url: str, store, command: str, create: bool = False):
    """The remote at `url`, checked reachable (and writable with `create`); None after saying
    why not."""
    from formula.runtime.remote import Remote, RemoteError

    try:
        remote = Remote(url, store)
        remote.check(create=create)
        return remote
    except RemoteError as exc:
        print(f"formula {command}: {exc}", file=sys.stderr)
        return None


def push_build(remote, store, build: dict, name: str, tag: str = "") -> int:
    """Push the steps of one build and name it on the remote; say what moved."""
    from formula.runtime.remote import RemoteError

    keys = sorted(set(build.get("steps", {}).values()))
    try:
        skipped = remote.push(keys)
        if not skipped:
            remote.publish(name, build, tag)
    except RemoteError as exc:
        print(f"formula push: {exc}; records are written after their objects, so nothing "
              "half-pushed is used by a pull", file=sys.stderr)
        return EXIT_ERRORS
    t = remote.transfer
    for problem in t.problems:
        print(f"formula push: {problem}", file=sys.stderr)
    print(f"pushed {t.records} of {len(keys)} steps to {remote.url}: {t.objects} objects, "
          f"{t.rate()}; {t.present} were there already", file=sys.stderr)
    if skipped:
        print(f"formula push: {len(skipped)} steps were not pushed, so the build was not named "
              f"`{name}` on the remote", file=sys.stderr)
        return EXIT_ERRORS
    return EXIT_OK


def _formula_name(formula: str, compile_) -> str | None:
    plan_, graph = compile_(formula, [])
    if graph is None:
        return None
    return getattr(plan_, "name", "") or Path(formula).stem


def cmd_push(ns: argparse.Namespace, compile_, store_) -> int:
    url = remote_url(ns)
    if not url:
        print(f"formula push: no remote: give --remote URL or set ${REMOTE_ENV}", file=sys.stderr)
        return EXIT_USAGE
    store = store_(ns.formula, ns.store)
    if store is None:
        return EXIT_USAGE
    if ns.tag:
        build = store.tags().get(ns.tag)
        if build is None:
            print(f"formula push: no build is tagged `{ns.tag}` in {store.root}", file=sys.stderr)
            return EXIT_USAGE
    else:
        build = store.latest(ns.formula)
    if not build or not build.get("steps"):
        print(f"formula push: {ns.formula} has not been built in {store.root}; run "
              f"`formula build {ns.formula}` first", file=sys.stderr)
        return EXIT_USAGE
    name = build.get("name") or _formula_name(ns.formula, compile_)
    if not name:
        return EXIT_ERRORS
    remote = open_remote(url, store, "push", create=True)
    if remote is None:
        return EXIT_ERRORS
    return push_build(remote, store, build, name, ns.tag or "")


def cmd_pull(ns: argparse.Namespace, compile_, store_) -> int:
    from formula.runtime.remote import RemoteError

    url = remote_url(ns)
    if not url:
        print(f"formula pull: no remote: give --remote URL or set ${REMOTE_ENV}", file=sys.stderr)
        return EXIT_USAGE
    name = _formula_name(ns.formula, compile_)
    if name is None:
        return EXIT_ERRORS
    store = store_(ns.formula, ns.store)
    if store is None:
        return EXIT_USAGE
    remote = open_remote(url, store, "pull")
    if remote is None:
        return EXIT_ERRORS
    build = remote.build(name, ns.tag or "")
    if not build or not isinstance(build.get("steps"), dict):
        what = f"no build tagged `{ns.tag}`" if ns.tag else f"no build of `{name}`"
        print(f"formula pull: {remote.url} has {what}; `formula push` puts one there", file=sys.stderr)
        return EXIT_USAGE
    keys = sorted(set(build["steps"].values()))
    try:
        missing = remote.pull(keys)
    except RemoteError as exc:
        print(f"formula pull: {exc}", file=sys.stderr)
        return EXIT_ERRORS
    t = remote.transfer
    print(f"pulled {t.records} of {len(keys)} steps from {remote.url}: {t.objects} objects, "
          f"{t.rate()}; {t.present} were here already", file=sys.stderr)
    if missing:
        print(f"formula pull: the remote lacks {len(missing)} steps of that build", file=sys.stderr)
        return EXIT_ERRORS
    print(f"`formula build {ns.formula}` now uses them (steps whose key is unchanged here)", file=sys.stderr)
    return EXIT_OK


def after_build(remote, store, formula: str, push: bool) -> int:
    """What `build --remote` downloaded, and with `--push`, the build pushed back."""
    if remote is None:
        return EXIT_OK
    t = remote.transfer
    if t.records:
        print(f"downloaded {t.records} steps from {remote.url}: {t.objects} objects, {t.rate()}",
              file=sys.stderr)
    if not push:
        return EXIT_OK
    build = store.latest(formula)
    if not build or not build.get("steps"):
        return EXIT_OK
    from formula.runtime.remote import Transfer

    remote.transfer = Transfer()
    return push_build(remote, store, build, build.get("name") or Path(formula).stem)


def add_commands(sub, compile_, store_) -> None:
    for name, func, help_ in (
            ("push", cmd_push, "copy a formula's latest build (or a tag) to a shared cache"),
            ("pull", cmd_pull, "fetch a formula's pushed build (or a tag) from a shared cache")):
        p = sub.add_parser(name, help=help_, description=help_ + ". The remote is any fsspec URL "
                           f"(a shared folder, s3://bucket/prefix, gs://...), default ${REMOTE_ENV}.")
        p.add_argument("formula")
        p.add_argument("--remote", metavar="URL", help=f"the shared cache (default ${REMOTE_ENV})")
        p.add_argument("--tag", metavar="NAME", help="the build tagged NAME instead of the latest")
        p.add_argument("--store", help="store folder (default: .formula/ in the project, or $FORMULA_HOME)")
        p.set_defaults(func=lambda ns, f=func: f(ns, compile_, store_))

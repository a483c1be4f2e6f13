"""What every step module shares: its one entry as a Hydra application.

A step module defines a `Config` dataclass (its OmegaConf structured config; None takes the
configuration as a plain dict), a function
`run(cfg, inputs, output, work)`, optionally `LIBRARIES` (distributions whose versions shape its
output), and ends with

    main = step_entry(Config, run)
    if __name__ == "__main__":
        main()

so that `python -m MODULE --config-dir DIR --config-name step` runs it alone from the YAML the
build wrote: `config` (the resolved configuration), `inputs` (name → folder or file), `output`
(an empty folder to fill) and `work` (scratch space that survives a crash, for checkpoints).
The step knows nothing about caching, hashing or the store.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable


PARENT_ENV = "FORMULA_PARENT_PID"


def kill_on_parent_death() -> None:
    """Linux: have the kernel kill this process when its parent dies (PR_SET_PDEATHSIG)."""
    import signal

    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: `die_with_parent` still catches a parent that is already gone


def die_with_parent() -> None:
    """A step must not outlive the build that started it: a killed build would otherwise
    leave a step writing into the work folder that the next build resumes from."""
    kill_on_parent_death()
    parent = os.environ.get(PARENT_ENV)
    if parent and int(parent) != os.getppid():
        os._exit(1)


def step_entry(config_cls: type | None, run: Callable) -> Callable[[], None]:
    def main() -> None:
        die_with_parent()
        import hydra
        from omegaconf import OmegaConf

        @hydra.main(version_base=None, config_path=None, config_name=None)
        def app(cfg) -> None:
            if config_cls is None:
                config = OmegaConf.to_container(cfg.config, resolve=True)
            else:
                config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(config_cls), cfg.config))
            inputs = {k: Path(v) for k, v in cfg.inputs.items()}
            output = Path(cfg.output)
            if os.environ.get("RANK", "0") == "0":  # in a multi-process step, rank 0 owns the output
                if output.exists():
                    shutil.rmtree(output)
                output.mkdir(parents=True)
            work = Path(cfg.work)
            work.mkdir(parents=True, exist_ok=True)
            run(config, inputs, output, work)

        app()
        exit_without_teardown()

    return main


def exit_without_teardown() -> None:
    """End a step that succeeded without the interpreter's teardown: freeing torch's and
    transformers' modules object by object takes about a second, the same order as a short
    step's own overhead. Exit handlers still run (logging flushes, datasets removes its
    temporary caches there), and everything the step wrote was closed before `run` returned."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def fail(message: str) -> None:
    """End a step with a message for the user (no traceback): bad input, not a bug."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(3)

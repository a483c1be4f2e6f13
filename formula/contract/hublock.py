"""The lock file of a formula's hub models, and which files of a hub repository a model needs.

A formula names a hub model by a revision (`hub("org/name")` is `main`), which moves; the lock
file beside the formula (`coder.formula` → `coder.formula.lock`) pins each (repository,
revision) the formula names to the commit it resolved to, with the files the model needs at
that commit. The compiler reads it: a pinned model's step configuration carries the commit and
the files, so they are part of the step key, and a moved `main` rebuilds nothing until
`formula lock --upgrade` moves the pin. Like Cargo.lock, it is meant to be committed beside the
formula; `formula build` writes the entries it lacks and says so.

JSON, written in a stable order (entries by repository and revision, files by name), so a moved
pin is a small diff. No network and no heavy imports here: the compiler and the CLI share it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from fnmatch import fnmatch

LOCK_FORMAT = 1
SUFFIX = ".lock"
COMMIT = re.compile(r"[0-9a-f]{40}")

# What a causal LM needs from its repository, besides its weights (transformers' file names).
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json")
# Read only where the repository has no tokenizer.json (a slow tokenizer to convert).
SLOW_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")
# The weights transformers loads: one file, or the shards its index names. Not Mistral's
# `consolidated.safetensors` (the same weights for mistral-inference) nor adapters.
SAFETENSORS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")


class LockError(ValueError):
    """A lock file that cannot be read; the message names the file and what to do."""


@dataclass(frozen=True)
class LockedFile:
    name: str
    size: int | None = None
    sha256: str | None = None  # the LFS object's sha256 where the hub gives one (weights)


@dataclass(frozen=True)
class Pin:
    repo: str
    revision: str
    commit: str
    files: tuple[LockedFile, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.files)

    @property
    def sha256sums(self) -> tuple[str, ...]:
        """`sha256sum` lines ("HEX  NAME") of the files whose sha256 the lock holds."""
        return tuple(f"{f.sha256}  {f.name}" for f in self.files if f.sha256)

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)


def lock_path(formula: str) -> str:
    return os.path.abspath(formula) + SUFFIX


def needed_files(names: list[str] | tuple[str, ...]) -> tuple[list[str], bool]:
    """The files of a repository that a model needs, and whether its weights are pickle files.

    Top-level files only: `original/` (Meta's checkpoints), GGUF, ONNX, framework copies and
    `consolidated.safetensors` are never fetched. The safetensors weights transformers loads
    (and their index) when there are any, else the
    pickle weights (`pytorch_model*.bin`), which the model step reads only with
    `allow_pickle = true`; configs; the tokenizer, with the slow tokenizer's files only where
    there is no tokenizer.json; the chat template files."""
    top = sorted(n for n in names if "/" not in n)

    def matching(patterns: tuple[str, ...]) -> list[str]:
        return [n for n in top if any(fnmatch(n, p) for p in patterns)]

    weights = matching(SAFETENSORS)
    pickle = not any(n.endswith(".safetensors") for n in weights)
    if pickle:
        weights = matching(PICKLE_WEIGHTS)
    wanted = set(CONFIG_FILES) | set(TOKENIZER_FILES)
    if "tokenizer.json" not in top:
        wanted |= set(SLOW_TOKENIZER_FILES)
    return sorted(set(weights) | {n for n in top if n in wanted}), pickle and bool(weights)


def tokenizer_files(names: tuple[str, ...]) -> list[str]:
    """Of a pin's files, those a tokenizer alone needs (config.json names its class)."""
    keep = set(TOKENIZER_FILES) | set(SLOW_TOKENIZER_FILES) | {"config.json"}
    return [n for n in names if n in keep]


def is_weights(name: str) -> bool:
    return name.endswith(".safetensors") or fnmatch(name, "pytorch_model*.bin")


def read(path: str) -> dict[tuple[str, str], Pin] | None:
    """The pins of a lock file by (repository, revision); None when there is no lock file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LockError(f"cannot read the lock file {path}: {exc}") from None
    try:
        if data.get("format") != LOCK_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {LOCK_FORMAT}")
        pins = {}
        for m in data["models"]:
            files = tuple(LockedFile(f["name"], f.get("size"), f.get("sha256")) for f in m["files"])
            if not COMMIT.fullmatch(m["commit"]):
                raise ValueError(f"{m['repo']}: commit {m['commit']!r} is not a commit id")
            pins[(m["repo"], m["revision"])] = Pin(m["repo"], m["revision"], m["commit"], files)
        return pins
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise LockError(f"the lock file {path} is not one `formula lock` writes "
                        f"({exc})") from None


def write(path: str, pins: dict[tuple[str, str], Pin]) -> None:
    """Atomically, in a stable order."""
    models = [{"repo": p.repo, "revision": p.revision, "commit": p.commit,
               "files": [{k: v for k, v in (("name", f.name), ("size", f.size), ("sha256", f.sha256))
                          if v is not None} for f in sorted(p.files, key=lambda f: f.name)]}
              for _, p in sorted(pins.items())]
    text = json.dumps({"format": LOCK_FORMAT, "models": models}, indent=2) + "\n"
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)

"""Model weights: safetensors, and pickle only where a formula allows it.

A pickle checkpoint (`pytorch_model.bin`, `*.pt`, `*.pth`, `*.ckpt`) is a Python pickle, and
unpickling can run code. torch's `weights_only` loader refuses the payloads it knows, but that is a
filter on a format made to run code; safetensors holds tensors and a JSON header, nothing else.
So a base model's weights enter the store only through the model step, as safetensors: it copies
a folder's (or a hub repository's) safetensors and leaves pickle files behind, and a model with
pickle weights only is refused, naming the files and `allow_pickle = true`, the model field that
lets the step read them once (with torch's `weights_only` loader) and store them as safetensors.
Every later step loads weights with `use_safetensors=True`. `formula check` refuses a local model
folder holding pickle weights only, before anything is built.

This module reads folder listings only (no torch): the compiler and the steps share it.
"""

from __future__ import annotations

import os

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PICKLE_PATTERNS = tuple(f"*{s}" for s in PICKLE_SUFFIXES)  # for hub downloads and folder copies


def _files(folder: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
    except OSError:
        return []


def safetensors_files(folder: str) -> list[str]:
    return [n for n in _files(folder) if n.endswith(".safetensors")]


def pickle_files(folder: str) -> list[str]:
    return [n for n in _files(folder) if n.endswith(PICKLE_SUFFIXES)]


def pickle_only(folder: str) -> list[str]:
    """The pickle files of a model folder that has no safetensors weights; [] otherwise."""
    return [] if safetensors_files(folder) else pickle_files(folder)


def refusal(what: str, files: list[str], model: str) -> str:
    """The one line a step fails with when a model has pickle weights only."""
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return (f"{what} holds pickle weights only ({shown}); they are not loaded, since unpickling a file "
            f"can run code: convert them to safetensors, or set `allow_pickle = true` in model `{model}` "
            "to read them once and store them as safetensors")

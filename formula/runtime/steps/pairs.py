"""The pairs step: preference pairs built from a corpus's sessions, or read as given.

From a corpus: sessions matching `chosen` and `rejected` (the rejected side may come from the
sessions the quality gates dropped, such as failing loops) are paired when they share a bead or
the same first prompt. Each pair is `{"prompt": [...], "chosen": [...], "rejected": [...]}`
in OpenAI message shape, with the ids of both sessions and the key they share.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from formula.runtime.corpus import loaders
from formula.runtime.corpus.predicate import describe, matches
from formula.runtime.corpus.sessions import LoadError
from formula.runtime.step import fail, step_entry


@dataclass
class Config:
    name: str = "pairs"
    data: Any = None       # {"kind": "corpus", "name", "split", "where"}
    source: Any = None     # given pairs: a transcript source with format = pairs
    chosen: Any = None
    rejected: Any = None
    match: str = "bead"
    type: str = "pairs_plan"


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def split_prompt(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """The prompt is everything up to the first user message; the rest is the completion."""
    for i, m in enumerate(messages):
        if m["role"] == "user":
            return messages[: i + 1], messages[i + 1:]
    return [], messages


def key_of(session: dict, match: str) -> str | None:
    if match == "bead":
        return session["meta"].get("bead")
    prompt, _ = split_prompt(session["messages"])
    return json.dumps(prompt, sort_keys=True) if prompt else None


def build_pairs(sessions: list[dict], cfg: Config) -> tuple[list[dict], dict]:
    chosen, rejected = defaultdict(list), defaultdict(list)
    counts = {"chosen": 0, "rejected": 0, "unkeyed": 0}
    for s in sessions:
        side = None
        if matches(cfg.chosen, s["meta"]) and "dropped" not in s["meta"]:
            side = chosen
            counts["chosen"] += 1
        elif matches(cfg.rejected, s["meta"]):
            side = rejected
            counts["rejected"] += 1
        if side is None:
            continue
        key = key_of(s, cfg.match)
        if key is None:
            counts["unkeyed"] += 1
            continue
        side[key].append(s)
    pairs = []
    for key in sorted(set(chosen) & set(rejected)):
        good = sorted(chosen[key], key=lambda s: s["id"])
        for i, bad in enumerate(sorted(rejected[key], key=lambda s: s["id"])):
            win = good[i % len(good)]
            prompt, win_rest = split_prompt(win["messages"])
            _, bad_rest = split_prompt(bad["messages"])
            pairs.append({"prompt": prompt, "chosen": win_rest, "rejected": bad_rest,
                          "chosen_id": win["id"], "rejected_id": bad["id"],
                          "key": win["meta"].get("bead") if cfg.match == "bead" else "prompt"})
    return pairs, counts


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    if cfg.source is not None:
        skipped = loaders.Skipped()
        try:
            pairs = [p for f in loaders.files_of(str(inputs["source"]))
                     for p in loaders.pair_records(f, "fail", skipped)]
        except LoadError as exc:
            fail(f"pairs `{cfg.name}`: {exc}")
        counts = {"given": len(pairs)}
    else:
        corpus = inputs["corpus"]
        split = (cfg.data or {}).get("split", "train")
        sessions = _read(corpus / f"{split}.jsonl") + _read(corpus / "dropped.jsonl")
        where = (cfg.data or {}).get("where")
        sessions = [s for s in sessions if matches(where, s["meta"])]
        pairs, counts = build_pairs(sessions, cfg)
    if not pairs:
        fail(f"pairs `{cfg.name}` is empty: {counts}; chosen = {describe(cfg.chosen)}, rejected = "
             f"{describe(cfg.rejected)}, matched by {cfg.match}. Check that both sides occur and "
             f"share a {cfg.match}")
    with open(output / "pairs.jsonl", "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p, sort_keys=True, ensure_ascii=False) + "\n")
    (output / "metrics.json").write_text(json.dumps({"pairs": len(pairs), **counts}))


main = step_entry(Config, run)

if __name__ == "__main__":
    main()

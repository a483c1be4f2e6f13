"""The pairs step: preference pairs built from a corpus's sessions, or read as given.

From a corpus: sessions matching `chosen` and `rejected` (the rejected side may come from the
sessions the quality gates dropped, such as failing loops) are paired when they share a bead or
the same first prompt. Each pair is `{"prompt": [...], "chosen": [...], "rejected": [...]}`
in OpenAI message shape, with the ids of both sessions and the key they share.

Matched by bead, a rejected session is paired with a chosen one on the same work bead that did
not start before it, where both carry start times (the bead was burned in one session and merged
in a later one); a chosen session of the same role is preferred, and chosen sessions are reused
as evenly as they can be. `labeled.jsonl` holds every side on its own, paired or not:
`{"prompt", "completion", "label", "id", "bead"}`, for methods that take unpaired desirable and
undesirable examples (KTO).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from formula.contract.conditions import describe, matches
from formula.contract.steps import PairsConfig
from formula.runtime.corpus import loaders
from formula.runtime.corpus.beads import parse_time
from formula.runtime.corpus.sessions import LoadError
from formula.runtime.step import fail, step_entry
from formula.runtime.steps import typed


Config = PairsConfig  # the step's configuration: formula/contract/steps.py


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


def started(session: dict) -> datetime | None:
    meta = session["meta"]
    return parse_time(meta.get("start")) or parse_time(meta.get("end"))


def _pick(bad: dict, good: list[dict], uses: Counter, by_time: bool) -> dict | None:
    """The chosen session to pair with one rejected session, or None."""
    when = started(bad) if by_time else None
    if when is not None:  # the chosen side must not be the earlier one
        good = [g for g in good if (t := started(g)) is None or t >= when]
    same_role = [g for g in good if g["meta"].get("role") == bad["meta"].get("role")]
    good = same_role or good
    if not good:
        return None

    def distance(g: dict) -> float:
        t = started(g)
        return (t - when).total_seconds() if t is not None and when is not None else 0.0

    return min(good, key=lambda g: (uses[g["id"]], distance(g), g["id"]))


def _order(s: dict) -> tuple:
    t = started(s)
    return (t is None, t.timestamp() if t is not None else 0.0, s["id"])


def build_pairs(sessions: list[dict], cfg: Config) -> tuple[list[dict], dict]:
    chosen: defaultdict[str, list[dict]] = defaultdict(list)
    rejected: defaultdict[str, list[dict]] = defaultdict(list)
    counts = {"chosen": 0, "rejected": 0, "unkeyed": 0, "out_of_order": 0}
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
        good = sorted(chosen[key], key=_order)
        uses: Counter = Counter()
        for bad in sorted(rejected[key], key=_order):
            win = _pick(bad, good, uses, by_time=cfg.match == "bead")
            if win is None:
                counts["out_of_order"] += 1
                continue
            uses[win["id"]] += 1
            prompt, win_rest = split_prompt(win["messages"])
            _, bad_rest = split_prompt(bad["messages"])
            pairs.append({"prompt": prompt, "chosen": win_rest, "rejected": bad_rest,
                          "chosen_id": win["id"], "rejected_id": bad["id"],
                          "key": win["meta"].get("bead") if cfg.match == "bead" else "prompt"})
    return pairs, counts


def build_labeled(sessions: list[dict], cfg: Config) -> list[dict]:
    """Every desirable (chosen) and undesirable (rejected) session on its own."""
    out = []
    for s in sorted(sessions, key=lambda s: s["id"]):
        if matches(cfg.chosen, s["meta"]) and "dropped" not in s["meta"]:
            label = True
        elif matches(cfg.rejected, s["meta"]):
            label = False
        else:
            continue
        prompt, completion = split_prompt(s["messages"])
        if prompt and completion:
            out.append({"prompt": prompt, "completion": completion, "label": label, "id": s["id"],
                        "bead": s["meta"].get("bead")})
    return out


def labeled_from_pairs(pairs: list[dict]) -> list[dict]:
    out = []
    for i, p in enumerate(pairs):
        name = str(p.get("id", f"pair{i}"))
        for side, label in (("chosen", True), ("rejected", False)):
            out.append({"prompt": p["prompt"], "completion": p[side], "label": label,
                        "id": f"{name}/{side}", "bead": p.get("key") if p.get("key") != "prompt" else None})
    return out


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    if cfg.source is not None:
        skipped = loaders.Skipped()
        try:
            pairs = [p for f in loaders.files_of(str(inputs["source"]))
                     for p in loaders.pair_records(f, "fail", skipped, cfg.source.max_event)]
        except LoadError as exc:
            fail(f"pairs `{cfg.name}`: {exc}")
        counts = {"given": len(pairs)}
        labeled = labeled_from_pairs(pairs)
    else:
        corpus = inputs["corpus"]
        split = cfg.data.split if cfg.data else "train"
        sessions = _read(corpus / f"{split}.jsonl") + _read(corpus / "dropped.jsonl")
        where = cfg.data.where if cfg.data else None
        sessions = [s for s in sessions if matches(where, s["meta"])]
        pairs, counts = build_pairs(sessions, cfg)
        labeled = build_labeled(sessions, cfg)
    if cfg.require == "labeled" and not labeled:
        fail(f"pairs `{cfg.name}` labels no session: {counts}; chosen = {describe(cfg.chosen)}, "
             f"rejected = {describe(cfg.rejected)}. Check that the conditions match sessions")
    if cfg.require != "labeled" and not pairs:
        fail(f"pairs `{cfg.name}` is empty: {counts}; chosen = {describe(cfg.chosen)}, rejected = "
             f"{describe(cfg.rejected)}, matched by {cfg.match}. Check that both sides occur and "
             f"share a {cfg.match}" + (" (a rejected session is paired with a chosen one that did "
                                       "not start before it)" if counts.get("out_of_order") else ""))
    for name, rows in (("pairs.jsonl", pairs), ("labeled.jsonl", labeled)):
        with open(output / name, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    desirable = sum(1 for row in labeled if row["label"])
    (output / "metrics.json").write_text(json.dumps({
        "pairs": len(pairs), "labeled": len(labeled), "desirable": desirable,
        "undesirable": len(labeled) - desirable, **counts}))


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

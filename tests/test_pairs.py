"""The pairs step on real outcomes: pairs matched by work bead (burned earlier, merged later),
unpaired desirable and undesirable labels, prompt matching, given pairs."""

import json
from pathlib import Path

import pytest

from formula.contract.conditions import Cmp
from formula.contract.steps import DataView, TranscriptSource
from formula.runtime.steps import pairs

MERGED = Cmp("outcome", "==", "merged")
BURNED = Cmp("outcome", "==", "burned")


def row(id, outcome, bead=None, start=None, role="polecat", prompt=None, dropped=None) -> dict:
    first = prompt or f"[GAS TOWN] gastown/polecats/{id} <- witness • 2026-03-01T06:02 • assigned:{bead}"
    meta = {"role": role, "outcome": outcome, "link": "assignee_time", "agent": f"gastown/polecats/{id}"}
    if bead:
        meta.update(bead=bead, beads=[bead])
    if start:
        meta.update(start=start, end=start)
    if dropped:
        meta["dropped"] = dropped
    return {"id": id, "meta": meta, "messages": [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "toolu_01", "type": "function", "function": {
            "name": "Bash", "arguments": json.dumps({"command": f"bd update {bead} --status=in_progress"})}}]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "ok"},
        {"role": "assistant", "content": f"{id} finished."}]}


def corpus(tmp_path: Path, train: list[dict], dropped: list[dict] = ()) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (folder / "dropped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dropped))
    return folder


def run(tmp_path: Path, folder: Path, match="bead", chosen=MERGED, rejected=BURNED, where=None):
    cfg = pairs.Config(name="prefs", data=DataView("corpus", "sessions", "train", where),
                       chosen=chosen, rejected=rejected, match=match)
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    out.mkdir()
    pairs.run(cfg, {"corpus": folder}, out, tmp_path / "work")
    read = lambda name: [json.loads(line) for line in (out / name).read_text().splitlines()]
    return read("pairs.jsonl"), read("labeled.jsonl"), json.loads((out / "metrics.json").read_text())


def test_burned_then_merged_on_the_same_bead_makes_a_pair(tmp_path):
    folder = corpus(tmp_path, [
        row("nux", "burned", "gt-4kx9m", "2026-03-01T14:10:00Z"),
        row("furiosa", "merged", "gt-4kx9m", "2026-03-01T16:30:00Z"),
        row("slit", "merged", "gt-9qz2p", "2026-03-01T17:00:00Z"),   # no burned session on its bead
    ])
    got, labeled, metrics = run(tmp_path, folder)
    assert [(p["chosen_id"], p["rejected_id"], p["key"]) for p in got] == [("furiosa", "nux", "gt-4kx9m")]
    p = got[0]
    assert set(p) == {"prompt", "chosen", "rejected", "chosen_id", "rejected_id", "key"}
    assert p["prompt"][-1]["role"] == "user" and "furiosa" in p["prompt"][-1]["content"]
    assert p["chosen"][-1]["content"] == "furiosa finished." and p["rejected"][-1]["content"] == "nux finished."
    assert metrics["pairs"] == 1 and metrics["labeled"] == 3
    assert (metrics["desirable"], metrics["undesirable"]) == (2, 1)


def test_a_merge_before_the_burn_is_no_pair(tmp_path):
    folder = corpus(tmp_path, [
        row("furiosa", "merged", "gt-4kx9m", "2026-03-01T12:00:00Z"),
        row("nux", "burned", "gt-4kx9m", "2026-03-01T14:10:00-08:00"),   # later, in local time
    ])
    with pytest.raises(SystemExit):
        run(tmp_path, folder)


def test_without_timestamps_sessions_on_a_bead_still_pair(tmp_path):
    folder = corpus(tmp_path, [row("nux", "burned", "gt-4kx9m"), row("furiosa", "merged", "gt-4kx9m")])
    got, _, _ = run(tmp_path, folder)
    assert [(p["chosen_id"], p["rejected_id"]) for p in got] == [("furiosa", "nux")]


def test_the_chosen_side_prefers_the_same_role_and_is_reused_evenly(tmp_path):
    folder = corpus(tmp_path, [
        row("nux", "burned", "gt-4kx9m", "2026-03-01T10:00:00Z"),
        row("rictus", "burned", "gt-4kx9m", "2026-03-01T11:00:00Z"),
        row("toast", "burned", "gt-4kx9m", "2026-03-01T11:30:00Z"),
        row("refinery", "merged", "gt-4kx9m", "2026-03-01T12:00:00Z", role="refinery"),
        row("furiosa", "merged", "gt-4kx9m", "2026-03-01T13:00:00Z"),
        row("slit", "merged", "gt-4kx9m", "2026-03-01T14:00:00Z"),
    ])
    got, _, _ = run(tmp_path, folder)
    assert sorted((p["rejected_id"], p["chosen_id"]) for p in got) == \
        [("nux", "furiosa"), ("rictus", "slit"), ("toast", "furiosa")]


def test_labels_include_dropped_undesirable_sessions_and_skip_unlinked_ones(tmp_path):
    folder = corpus(tmp_path, [row("nux", "burned", "gt-4kx9m", "2026-03-01T10:00:00Z"),
                               row("furiosa", "merged", "gt-4kx9m", "2026-03-01T12:00:00Z"),
                               row("dag", None)],
                    dropped=[row("toast", "burned", "gt-77abc", "2026-03-01T09:00:00Z", dropped="failing_loop"),
                             row("ace", "merged", "gt-77abc", "2026-03-01T09:30:00Z", dropped="garbled")])
    _, labeled, metrics = run(tmp_path, folder)
    assert [(r["id"], r["label"], r["bead"]) for r in labeled] == \
        [("furiosa", True, "gt-4kx9m"), ("nux", False, "gt-4kx9m"), ("toast", False, "gt-77abc")]
    r = labeled[0]
    assert set(r) == {"prompt", "completion", "label", "id", "bead"}
    assert r["prompt"][-1]["role"] == "user" and r["completion"][0]["role"] == "assistant"
    assert metrics["labeled"] == 3 and metrics["rejected"] == 2


def test_match_by_prompt_still_pairs(tmp_path):
    same = "Fix the flaky store test"
    folder = corpus(tmp_path, [row("a", "merged", prompt=same, start="2026-03-01T09:00:00Z"),
                               row("b", "burned", prompt=same, start="2026-03-01T10:00:00Z"),
                               row("c", "merged", prompt="Something else")])
    got, labeled, metrics = run(tmp_path, folder, match="prompt")
    assert [(p["chosen_id"], p["rejected_id"], p["key"]) for p in got] == [("a", "b", "prompt")]
    assert metrics["labeled"] == 3


def test_given_pairs_are_labeled_too(tmp_path):
    given = tmp_path / "given.jsonl"
    given.write_text(json.dumps({"prompt": [{"role": "user", "content": "Merge the queue."}],
                                 "chosen": [{"role": "assistant", "content": "Merged 3."}],
                                 "rejected": [{"role": "assistant", "content": "I cannot."}]}) + "\n")
    cfg = pairs.Config(name="given", source=TranscriptSource(glob=str(given), format="pairs"))
    out = tmp_path / "out"
    out.mkdir()
    pairs.run(cfg, {"source": given}, out, tmp_path / "work")
    labeled = [json.loads(line) for line in (out / "labeled.jsonl").read_text().splitlines()]
    assert [(r["id"], r["label"]) for r in labeled] == [("pair0/chosen", True), ("pair0/rejected", False)]
    assert json.loads((out / "metrics.json").read_text())["labeled"] == 2

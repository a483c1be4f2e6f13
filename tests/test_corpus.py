"""The corpus and pairs steps, run in-process on small inputs made here."""

import json
from pathlib import Path

import pytest

from dataclasses import replace

from formula.contract.conditions import Cmp
from formula.contract.steps import DataView, GastownSource, TranscriptSource
from formula.runtime.steps import corpus, pairs

from conftest import ROOT


def claude_event(kind, session, content, cwd="/home/op/gt/mayor", n=0):
    return {"type": kind, "sessionId": session, "cwd": cwd, "gitBranch": "main",
            "timestamp": f"2026-10-01T10:00:{n:02d}Z", "uuid": f"u{n}", "message": {"role": kind, "content": content}}


def write_session(folder: Path, session: str, turns: list, cwd="/home/op/gt/mayor") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{session}.jsonl"
    with open(path, "w") as fh:
        for n, (kind, content) in enumerate(turns):
            fh.write(json.dumps(claude_event(kind, session, content, cwd, n)) + "\n")
    return path


def ok_session(i: int, text: str = "") -> list:
    tid = f"toolu_{i}"
    return [("user", f"Fix bug {i} in the store module{text}"),
            ("assistant", [{"type": "text", "text": "Running the tests."},
                           {"type": "tool_use", "id": tid, "name": "Bash", "input": {"command": f"pytest -k t{i}"}}]),
            ("user", [{"type": "tool_result", "tool_use_id": tid, "content": "3 passed"}]),
            ("assistant", [{"type": "text", "text": f"Bug {i} is fixed; three tests pass."}])]


def loop_session(i: int) -> list:
    turns = [("user", f"Fix bug {i} in the store module")]
    for k in range(4):
        tid = f"toolu_{i}_{k}"
        turns += [("assistant", [{"type": "tool_use", "id": tid, "name": "Bash", "input": {"command": "pytest"}}]),
                  ("user", [{"type": "tool_result", "tool_use_id": tid, "content": "FAILED test_x", "is_error": True}])]
    return turns + [("assistant", [{"type": "text", "text": "Giving up."}])]


def config(tmp_path, **kw) -> corpus.Config:
    src = TranscriptSource(input="source0", glob=str(tmp_path / "data" / "**" / "*.jsonl"), format="claude_code")
    return corpus.Config(name="sessions", sources=(src,), **kw)


def run_corpus(tmp_path, cfg, out="out") -> Path:
    output = tmp_path / out
    output.mkdir()
    corpus.run(cfg, {"source0": Path(cfg.sources[0].glob)}, output, tmp_path / "work")
    return output


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_claude_code_sessions_become_messages_with_tool_calls(tmp_path):
    write_session(tmp_path / "data", "s1", ok_session(1))
    out = run_corpus(tmp_path, config(tmp_path))
    [s] = read(out / "train.jsonl")
    roles = [m["role"] for m in s["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"]
    call = s["messages"][1]["tool_calls"][0]
    assert call["function"] == {"name": "Bash", "arguments": '{"command": "pytest -k t1"}'}
    assert s["messages"][2]["tool_call_id"] == call["id"]
    assert s["provenance"]["lines"] == [1, 4] and s["provenance"]["content_hash"]
    assert s["meta"]["turns"] == 1 and s["meta"]["tool_calls"] == 1


def test_holdout_is_stable_when_sessions_are_added(tmp_path):
    for i in range(60):
        write_session(tmp_path / "data", f"session-{i:03}", ok_session(i))
    first = run_corpus(tmp_path, config(tmp_path, holdout=0.2), "a")
    for i in range(60, 150):
        write_session(tmp_path / "data", f"session-{i:03}", ok_session(i))
    second = run_corpus(tmp_path, config(tmp_path, holdout=0.2), "b")
    held_before = {s["id"] for s in read(first / "holdout.jsonl")}
    held_after = {s["id"] for s in read(second / "holdout.jsonl")}
    train_before = {s["id"] for s in read(first / "train.jsonl")}
    assert held_before and held_before <= held_after
    assert not (train_before & held_after)
    assert 0.1 < len(held_after) / 150 < 0.3


def test_a_malformed_line_names_file_and_line(tmp_path, capsys):
    path = write_session(tmp_path / "data", "s1", ok_session(1))
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(SystemExit):
        run_corpus(tmp_path, config(tmp_path))
    err = capsys.readouterr().err
    assert f"{path}:5: not valid JSON" in err and "on_error = skip" in err


def test_on_error_skip_counts_and_lists_the_line(tmp_path):
    path = write_session(tmp_path / "data", "s1", ok_session(1))
    path.write_text(path.read_text() + "{not json\n")
    out = run_corpus(tmp_path, config(tmp_path, on_error="skip"))
    report = json.loads((out / "report.json").read_text())
    # relative to the data's root: the report names no machine's folders
    assert report["skipped_lines"] == [{"file": "s1.jsonl", "line": 5, "error": report["skipped_lines"][0]["error"]}]
    assert json.loads((out / "metrics.json").read_text())["skipped_lines"] == 1


def test_an_empty_corpus_names_the_filter_that_emptied_it(tmp_path, capsys):
    write_session(tmp_path / "data", "s1", ok_session(1))
    with pytest.raises(SystemExit):
        run_corpus(tmp_path, config(tmp_path, where=Cmp("role", "==", "polecat")))
    err = capsys.readouterr().err
    assert 'is empty after where role == "polecat"' in err and "read: 1" in err


def test_failing_loops_are_dropped_and_the_gate_can_fail_the_build(tmp_path, capsys):
    for i in range(3):
        write_session(tmp_path / "data", f"ok{i}", ok_session(i))
    write_session(tmp_path / "data", "loop", loop_session(9))
    out = run_corpus(tmp_path, config(tmp_path))
    report = json.loads((out / "report.json").read_text())
    assert report["dropped"] == {"failing_loop": 1} and report["kept"] == 3
    assert [s["id"] for s in read(out / "dropped.jsonl")] == ["loop"]
    with pytest.raises(SystemExit):
        run_corpus(tmp_path, config(tmp_path, max_dropped=0.2), "strict")
    assert "dropped 1 of 4 sessions (25%), more than max_dropped = 20%" in capsys.readouterr().err


def test_exact_and_near_duplicates(tmp_path):
    long_text = " " + " ".join(f"the store module line {k} does step {k * 7 % 13}" for k in range(40))
    write_session(tmp_path / "data", "a", ok_session(1, long_text))
    write_session(tmp_path / "data", "b", ok_session(1, long_text))          # exact copy
    write_session(tmp_path / "data", "c", ok_session(1, long_text + " x"))  # near copy
    write_session(tmp_path / "data", "d", ok_session(2))
    exact = json.loads((run_corpus(tmp_path, config(tmp_path), "e") / "report.json").read_text())
    assert exact["dropped"] == {"duplicate": 1} and exact["kept"] == 3
    near = json.loads((run_corpus(tmp_path, config(tmp_path, dedup="near", dedup_threshold=0.8), "n")
                       / "report.json").read_text())
    assert near["dropped"] == {"duplicate": 1, "near_duplicate": 1} and near["kept"] == 2


def test_gastown_roles_from_cwd_and_outcomes_from_beads(tmp_path):
    projects = tmp_path / "projects"
    write_session(projects / "-home-op-gt-mayor", "m1", ok_session(1), "/home/op/gt/mayor")
    write_session(projects / "-home-op-gt-rig-polecats-nux-rig", "p1", ok_session(2),
                  "/home/op/gt/rig/polecats/nux/rig")
    write_session(projects / "-home-op-gt-rig-witness", "w1", ok_session(3), "/home/op/gt/rig/witness")
    beads = tmp_path / "issues.jsonl"
    beads.write_text(json.dumps({"id": "gt-1", "status": "closed", "close_reason": "merged",
                                 "closed_by_session": "p1"}) + "\n")
    src = GastownSource(input="source0", projects=str(projects), beads=str(beads), town="/home/op/gt")
    cfg = corpus.Config(name="sessions", sources=(src,))
    out = tmp_path / "out"
    out.mkdir()
    corpus.run(cfg, {"source0": Path(f"{projects}/**/*.jsonl"), "source0_beads": beads}, out, tmp_path / "w")
    by_id = {s["id"]: s["meta"] for s in read(out / "train.jsonl")}
    assert {k: v["role"] for k, v in by_id.items()} == {"m1": "mayor", "p1": "polecat", "w1": "witness"}
    assert by_id["p1"]["outcome"] == "merged" and by_id["p1"]["bead"] == "gt-1"
    assert "outcome" not in by_id["m1"]
    assert "<pii:user>" in by_id["m1"]["cwd"] and "/op/" not in json.dumps(by_id)


def test_pairs_from_a_corpus_match_by_prompt(tmp_path, capsys):
    for i in range(2):
        write_session(tmp_path / "data", f"ok{i}", ok_session(i))
        write_session(tmp_path / "data", f"bad{i}", loop_session(i))
    sidecar = tmp_path / "meta.jsonl"
    sidecar.write_text("".join(json.dumps({"session": f"{k}{i}", "outcome": o}) + "\n"
                               for i in range(2) for k, o in (("ok", "merged"), ("bad", "abandoned"))))
    cfg = config(tmp_path)
    cfg = replace(cfg, sources=(replace(cfg.sources[0], meta="sidecar", meta_arg=str(sidecar)),))
    out = run_corpus(tmp_path, cfg)
    pcfg = pairs.Config(name="prefs", data=DataView("corpus", "sessions", "train"),
                        chosen=Cmp("outcome", "==", "merged"), rejected=Cmp("outcome", "==", "abandoned"),
                        match="prompt")
    pout = tmp_path / "pairs"
    pout.mkdir()
    pairs.run(pcfg, {"corpus": out}, pout, tmp_path / "w")
    got = read(pout / "pairs.jsonl")
    assert sorted((p["chosen_id"], p["rejected_id"]) for p in got) == [("ok0", "bad0"), ("ok1", "bad1")]
    assert got[0]["prompt"][-1]["role"] == "user" and got[0]["chosen"][0]["role"] == "assistant"
    pcfg = replace(pcfg, match="bead")
    empty = tmp_path / "pairs2"
    empty.mkdir()
    with pytest.raises(SystemExit):
        pairs.run(pcfg, {"corpus": out}, empty, tmp_path / "w")
    assert "pairs `prefs` is empty" in capsys.readouterr().err


def test_the_example_corpus_output_holds_no_planted_secret(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", ROOT / "examples" / "data" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    data = ROOT / "examples" / "data"
    src = GastownSource(input="source0", projects=str(data / "projects"), beads=str(data / "beads" / "issues.jsonl"),
                        town="/home/op/gt")
    out = tmp_path / "out"
    out.mkdir()
    corpus.run(corpus.Config(name="sessions", sources=(src,), holdout=0.1, max_dropped=0.5),
               {"source0": Path(f"{data}/projects/**/*.jsonl"), "source0_beads": data / "beads" / "issues.jsonl"},
               out, tmp_path / "w")
    written = "".join((out / f).read_text() for f in ("train.jsonl", "holdout.jsonl", "dropped.jsonl"))
    for planted in gen.PLANTED:
        secret = planted.split("=")[-1].split("Bearer ")[-1]
        assert secret not in written, planted
    for needle in ("AKIAIOSFODNN7EXAMPLE", "hunter2pass", "maintainer.jane@example.org", "10.20.30.40",
                   "/home/alice", "415-555-0134", "MIIEowIBAAKCAQEAu1SU1LfV", "xoxb-2837465019"):
        assert needle not in written
    report = json.loads((out / "report.json").read_text())
    assert report["scrub"]["by_kind"]["private_key"] >= 1 and report["roles"]["polecat"] > 0


def test_reading_on_several_processes_gives_what_one_process_gives(monkeypatch):
    from formula.runtime.corpus import claude_code, loaders as corpus_loaders

    data = ROOT / "examples" / "data" / "projects"
    files = corpus_loaders.files_of(f"{data}/**/*.jsonl")
    reading = corpus.Reading(claude_code.Options(), "fail", ("secrets", "pii"), str(data), "/home/op/gt")

    def read(procs: int):
        monkeypatch.setattr(corpus, "workers", lambda: procs)
        loaded = corpus.Loaded()
        sessions = corpus.read_claude_code(files, reading, loaded)
        return [s.to_json() for s in sessions], loaded.scrub.to_json(), loaded.claude.to_json()

    one, several = read(1), read(2)
    assert len(one[0]) >= 64 and sum(one[1]["by_kind"].values()) > 0
    assert several == one

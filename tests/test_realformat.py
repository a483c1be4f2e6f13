"""The corpus on real-format data: hand-made Claude Code folders (1.0, 2.0 and 2.1 layouts) and a
beads export with the real schema, checked against the ground truth their author wrote down
(`tests/fixtures/realformat/expected.json`, derived from the fixtures, not from this loader)."""

import json
import re
from pathlib import Path

import pytest

from formula.runtime.corpus import claude_code
from formula.runtime.corpus.quality import drop_reason, failing_loop, is_garbled
from formula.runtime.steps import corpus

HERE = Path(__file__).resolve().parent / "fixtures" / "realformat"
EXPECTED = json.loads((HERE / "expected.json").read_text())
TOWN = EXPECTED["town_root"]
NOT_A_TURN = re.compile(r"<command-name>|<local-command-stdout>|<local-command-caveat>|Caveat: The messages below|"
                        r"<task-notification>|\[Request interrupted by user|Limit reached|API Error|"
                        r"Base directory for this skill")


def shape(messages: list[dict]) -> list[str]:
    """The fixture author's notation for a conversation."""
    out = []
    for m in messages:
        if m["role"] == "assistant":
            calls = len(m.get("tool_calls", ()))
            text = bool(m.get("content"))
            out.append("assistant:" + ("text+" if text and calls else "text" if text else "")
                       + (f"tool_calls={calls}" if calls else ""))
        elif m["role"] == "tool":
            out.append("tool:error" if m.get("is_error") else "tool:image" if "[image]" in m["content"] else "tool")
        else:
            out.append("user:image" if m["content"] == "[image]" else m["role"])
    return out


def merge_adjacent_assistants(turns: list[str]) -> list[str]:
    """The fixtures allow a loader to keep or merge two assistant messages left adjacent by a
    dropped notification; compare without that freedom."""
    return [t for i, t in enumerate(turns) if not (t.startswith("assistant") and i and turns[i - 1].startswith("assistant"))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    src = corpus.GastownSource(input="source0", projects=str(HERE / "projects"),
                               beads=str(HERE / "beads" / "issues.jsonl"), town=TOWN)
    cfg = corpus.Config(name="sessions", sources=[src], max_dropped=0.5, dedup="exact")
    inputs = {"source0": Path(f"{HERE}/projects/**/*.jsonl"), "source0_beads": HERE / "beads" / "issues.jsonl"}
    result = corpus.collect(cfg, inputs)
    corpus.run(cfg, inputs, out, out / "work")
    examples = {s.id: s for s in result.kept + result.rejected}
    return result, examples, out


def test_every_session_segment_and_subagent_is_the_expected_conversation(built):
    _, examples, _ = built
    expected_ids = set()
    for exp in EXPECTED["sessions"]:
        sid = exp["session_id"]
        for k, seg in enumerate(exp["segments"], 1):
            eid = sid if k == 1 else f"{sid}~{k}"
            expected_ids.add(eid)
            assert eid in examples, f"{exp['name']}: segment {k} missing"
            messages = examples[eid].messages
            if seg["context"] == "compact_summary":  # the summary opens the segment, as context
                assert messages[0]["role"] == "user" and "continued from a previous conversation" in messages[0]["content"]
                messages = messages[1:]
            got = shape(messages)
            assert merge_adjacent_assistants(got) == merge_adjacent_assistants(seg["turns"]), exp["name"]
        for sub in exp["subagents"]:
            expected_ids.add(sub["id"])
            assert sub["id"] in examples, f"{exp['name']}: subagent {sub['id']} missing"
            s = examples[sub["id"]]
            assert shape(s.messages) == sub["turns"], sub["id"]
            assert s.meta["kind"] == "subagent" and s.meta["parent"] == sid and s.meta["role"] == exp["role"]
    assert set(examples) == expected_ids  # no compaction agent, no fragment posing as a session


def test_roles_and_agent_addresses_are_gastowns(built):
    _, examples, _ = built
    for exp in EXPECTED["sessions"]:
        meta = examples[exp["session_id"]].meta
        assert meta.get("role") == exp["role"], exp["name"]
        assert meta.get("agent") == exp["agent"], exp["name"]


def test_outcomes_links_and_the_unlinked(built):
    result, examples, _ = built
    for exp in EXPECTED["sessions"]:
        meta = examples[exp["session_id"]].meta
        assert meta.get("outcome") == exp["outcome"], exp["name"]
        if exp["outcome"] is not None:
            assert meta["bead"] in {link["bead"] for link in exp["links"]} | {exp["primary_bead"]}
    assert sorted(result.loaded.links["unlinked"]) == sorted(EXPECTED["unlinked"])


def test_nothing_that_is_not_conversation_is_a_turn_and_calls_keep_their_results(built):
    result, examples, _ = built
    assert result.loaded.claude.orphan_results == 0
    for s in examples.values():
        calls_open: set[str] = set()
        for m in s.messages:
            if m["role"] in ("user", "assistant"):
                assert not NOT_A_TURN.search(m.get("content") or ""), (s.id, m["content"][:80])
            if m["role"] == "assistant":
                calls_open = {c["id"] for c in m.get("tool_calls", ())}
            elif m["role"] == "tool":
                # every result sits right after the message holding its call: no split parallel calls
                assert m["tool_call_id"] in calls_open, s.id
            else:
                calls_open = set()
            assert "\x1b" not in (m.get("content") or "")


def test_gates_drop_only_the_real_failing_loop(built):
    result, examples, _ = built
    dropped = {s.id: s.meta["dropped"] for s in result.rejected}
    assert dropped == EXPECTED["quality_drops"]
    # precision on the fixtures: the long session that reads a file naming errors three times,
    # and every ANSI-coloured one, stay
    for s in examples.values():
        if s.id not in dropped:
            assert failing_loop(s) < 3 and not any(is_garbled(m.get("content") or "") for m in s.messages)


def test_output_ids_are_unique_and_nothing_planted_leaves_the_corpus_step(built):
    _, _, out = built
    ids = [json.loads(line)["id"] for name in ("train", "holdout", "dropped")
           for line in (out / f"{name}.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids))
    everything = "".join(p.read_text() for p in out.iterdir() if p.is_file())
    for item in EXPECTED["planted"]:
        assert item["value"] not in everything, item
    assert "/home/op" not in everything and "-home-op-" not in everything


def test_pairs_by_bead_from_real_outcomes(built):
    from formula.contract.conditions import Cmp
    from formula.runtime.steps import pairs

    _, examples, out = built
    sessions = [json.loads(line) for name in ("train", "holdout", "dropped")
                for line in (out / f"{name}.jsonl").read_text().splitlines()]
    cfg = pairs.Config(name="p", chosen=Cmp("outcome", "==", "merged"), rejected=Cmp("outcome", "==", "burned"),
                       match="bead")
    made, _ = pairs.build_pairs(sessions, cfg)
    want = EXPECTED["pairs"][0]
    assert [(p["chosen_id"], p["rejected_id"]) for p in made] == [(want["chosen"]["session_id"], want["rejected"]["session_id"])]


def test_a_cut_off_last_line_is_located_and_skippable():
    broken = EXPECTED["broken"]
    path = str(HERE / broken["file"])
    with pytest.raises(claude_code.LoadError) as exc:
        claude_code.read_events(path, "fail", corpus.loaders.Skipped())
    assert exc.value.path == path and exc.value.line > broken["blank_line"]
    skipped = corpus.loaders.Skipped()
    [s] = claude_code.load([path], "skip", skipped)
    assert shape(s.messages) == broken["segments"][0]["turns"] and len(skipped.items) == 1


def test_drop_reason_keeps_every_expected_session(built):
    _, examples, _ = built
    for exp in EXPECTED["sessions"]:
        s = examples[exp["session_id"]]
        assert drop_reason(s, 1, None, 3) == exp["quality_drop"], exp["name"]

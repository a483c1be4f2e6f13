"""The Claude Code loader on event trees built here, one mechanism per test: rewinds, split
assistant messages, parallel calls, compaction, subagents, meta events, images, ANSI, limits."""

import json
from pathlib import Path

import pytest

from formula.runtime.corpus import claude_code, loaders
from formula.runtime.corpus.gastown import agent_of
from formula.runtime.corpus.quality import drop_reason
from formula.runtime.corpus.sessions import LoadError


class Transcript:
    """Writes events the way Claude Code 2.1 does: uuids, parents, one block per assistant line."""

    def __init__(self, session="s-1", cwd="/home/op/gt/gastown/polecats/nux/gastown", sidechain=False, agent=None):
        self.session, self.cwd, self.sidechain, self.agent = session, cwd, sidechain, agent
        self.events: list[dict] = []
        self.n = 0
        self.last: str | None = None

    def _ev(self, kind, parent="last", **kw) -> str:
        self.n += 1
        uid = f"{self.session}-{'side-' if self.sidechain else ''}{self.n}"
        ev = {"parentUuid": self.last if parent == "last" else parent, "isSidechain": self.sidechain,
              "userType": "external", "cwd": self.cwd, "sessionId": self.session, "version": "2.1.63",
              "gitBranch": "main", "type": kind, "uuid": uid, "timestamp": f"2026-03-01T10:{self.n // 60:02d}:{self.n % 60:02d}.000Z",
              **({"agentId": self.agent} if self.agent else {}), **kw}
        self.events.append(ev)
        self.last = uid
        return uid

    def user(self, content, parent="last", **kw) -> str:
        return self._ev("user", parent, message={"role": "user", "content": content}, **kw)

    def assistant(self, block, mid, parent="last", **kw) -> str:
        return self._ev("assistant", parent, message={"id": mid, "type": "message", "role": "assistant",
                                                      "model": "claude-opus-4-6", "content": [block]}, **kw)

    def call(self, tid, command, mid, parent="last") -> str:
        return self.assistant({"type": "tool_use", "id": tid, "name": "Bash", "input": {"command": command}}, mid, parent)

    def result(self, tid, text, parent, error=False) -> str:
        block = {"tool_use_id": tid, "type": "tool_result", "content": text, **({"is_error": True} if error else {})}
        return self.user([block], parent, toolUseResult={"stdout": text, "stderr": "", "interrupted": False},
                         sourceToolAssistantUUID=parent)

    def text(self, text, mid, parent="last") -> str:
        return self.assistant({"type": "text", "text": text}, mid, parent)

    def other(self, kind, **kw) -> str:
        return self._ev(kind, **kw)

    def write(self, path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(e) + "\n" for e in self.events))
        return str(path)


def load(*paths, **options):
    stats = claude_code.Stats()
    sessions = claude_code.load(sorted(str(p) for p in paths), "fail", loaders.Skipped(),
                                claude_code.Options(**options), stats)
    return {s.id: s for s in sessions}, stats


def shape(messages):
    out = []
    for m in messages:
        if m["role"] == "assistant":
            out.append(f"assistant:tool_calls={len(m['tool_calls'])}" if m.get("tool_calls") else "assistant:text")
        else:
            out.append(m["role"])
    return out


def test_parallel_calls_are_one_message_with_each_result_after_it(tmp_path):
    t = Transcript()
    t.user("Fix the flaky test in store.py")
    t.assistant({"type": "thinking", "thinking": "Two reads at once.", "signature": "Eo8D"}, "msg_1")
    t.text("Reading both files.", "msg_1")
    a1 = t.call("toolu_a", "cat store.py", "msg_1")
    a2 = t.call("toolu_b", "cat test_store.py", "msg_1", parent=a1)
    t.result("toolu_a", "def put(): ...", parent=a1)
    r2 = t.result("toolu_b", "def test_put(): ...", parent=a2)
    t.text("Fixed.", "msg_2", parent=r2)
    sessions, stats = load(t.write(tmp_path / "p" / "s-1.jsonl"))
    msgs = sessions["s-1"].messages
    assert shape(msgs) == ["user", "assistant:tool_calls=2", "tool", "tool", "assistant:text"]
    assert msgs[1]["content"] == "Reading both files."
    assert [m["tool_call_id"] for m in msgs[2:4]] == ["toolu_a", "toolu_b"]
    assert "reasoning_content" not in msgs[1] and stats.orphan_results == 0
    kept, _ = load(tmp_path / "p" / "s-1.jsonl", thinking="keep")
    assert kept["s-1"].messages[1]["reasoning_content"] == "Two reads at once."


def test_rewind_keeps_the_final_branch_or_every_branch_when_asked(tmp_path):
    # a rewind answers the first prompt again: the new branch's parent is that prompt
    t2 = Transcript(session="s-2")
    p = t2.user("Add retries to the fetcher")
    t2.text("I will rewrite the whole module.", "m1")
    t2.user("Too much; undo.")
    t2.text("Undone.", "m2")
    t2.text("Only fetch() gets retries now.", "m3", parent=p)
    f = t2.write(tmp_path / "p" / "s-2.jsonl")
    sessions, stats = load(f)
    assert [m["content"] for m in sessions["s-2"].messages] == ["Add retries to the fetcher", "Only fetch() gets retries now."]
    assert stats.events["abandoned_branch"] == 1
    every, _ = load(f, branches="all")
    assert set(every) == {"s-2", "s-2@1"}
    assert [m["content"] for m in every["s-2@1"].messages][-1] == "Undone."


def test_compaction_splits_into_segments_that_start_from_the_summary(tmp_path):
    t = Transcript()
    t.user("Refactor the scheduler")
    last = t.text("Step one done.", "m1")
    t.other("system", parent=None, subtype="compact_boundary", content="Conversation compacted",
            logicalParentUuid=last, compactMetadata={"trigger": "auto", "preTokens": 160000})
    t.user("This session is being continued from a previous conversation. Summary: step one done.",
           isCompactSummary=True, isVisibleInTranscriptOnly=True)
    t.user("Continue with step two")
    t.text("Step two done.", "m2")
    sessions, stats = load(t.write(tmp_path / "p" / "s-1.jsonl"))
    assert set(sessions) == {"s-1", "s-1~2"}
    assert shape(sessions["s-1"].messages) == ["user", "assistant:text"]
    seg = sessions["s-1~2"]
    assert seg.messages[0]["content"].startswith("This session is being continued")
    assert seg.meta["segment"] == 2 and seg.meta["session"] == "s-1"


def test_meta_commands_interrupts_and_synthetic_errors_never_become_turns(tmp_path):
    t = Transcript()
    t.user("Caveat: The messages below were generated by the user while running local commands.", isMeta=True)
    t.user("<command-name>/model</command-name>\n<command-message>model</command-message>\n<command-args></command-args>")
    t.user("<local-command-stdout>Set model to opus</local-command-stdout>")
    t.user("Run the linter")
    a = t.call("toolu_1", "ruff check .", "m1")
    t.result("toolu_1", "The user doesn't want to proceed with this tool use.", parent=a, error=True)
    t.user([{"type": "text", "text": "[Request interrupted by user for tool use]"}])
    t.user("Base directory for this skill: /home/op/.claude/skills/lint", isMeta=True, sourceToolUseID="toolu_1")
    t.user("<task-notification>\n<task-id>b1</task-id>\n<status>completed</status>\n</task-notification>")
    t._ev("assistant", message={"id": "e1", "model": "<synthetic>", "role": "assistant",
                                "content": [{"type": "text", "text": "Limit reached · resets 3pm"}]},
          isApiErrorMessage=True)
    t.user("Try again")
    t.text("Lint is clean.", "m2")
    t.other("system", subtype="turn_duration", durationMs=1200)
    sessions, stats = load(t.write(tmp_path / "p" / "s-1.jsonl"))
    msgs = sessions["s-1"].messages
    assert shape(msgs) == ["user", "assistant:tool_calls=1", "tool", "user", "assistant:text"]
    assert [m["content"] for m in msgs if m["role"] == "user"] == ["Run the linter", "Try again"]
    assert stats.events["meta"] == 2 and stats.events["synthetic"] == 1
    assert stats.events["command_or_interrupt"] == 4


def test_images_become_placeholders_and_ansi_is_removed(tmp_path):
    t = Transcript()
    t.user([{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}])
    a = t.call("toolu_1", "npm test", "m1")
    t.result("toolu_1", "\x1b[32m✓\x1b[39m 12 passing\n\x1b[1m\x1b[31m0 failing\x1b[39m\x1b[22m", parent=a)
    t.text("All green.", "m2")
    sessions, _ = load(t.write(tmp_path / "p" / "s-1.jsonl"))
    s = sessions["s-1"]
    assert s.messages[0]["content"] == "[image]"
    assert s.messages[2]["content"] == "✓ 12 passing\n0 failing"
    assert drop_reason(s, 1, None, 3) is None


def test_subagents_in_both_layouts_are_their_own_examples_and_compaction_agents_never(tmp_path):
    proj = tmp_path / "p"
    main = Transcript()
    main.user("Survey the repo")
    a = main.assistant({"type": "tool_use", "id": "toolu_t", "name": "Task",
                        "input": {"description": "survey", "prompt": "List modules", "subagent_type": "Explore"}}, "m1")
    main.result("toolu_t", "Modules: store, graph", parent=a)
    main.text("Two modules.", "m2")
    main.write(proj / "s-1.jsonl")
    for path, agent in ((proj / "s-1" / "subagents" / "agent-a9f4657.jsonl", "a9f4657"),
                        (proj / "agent-0c1d2e3f.jsonl", "0c1d2e3f")):
        sub = Transcript(sidechain=True, agent=agent)
        sub.user("List modules")
        sub.text("store, graph", "sm1")
        sub.write(path)
    compact = Transcript(sidechain=True, agent="acompact-1f2e")
    compact.user("Summarise the conversation")
    compact.text("Summary: ...", "c1")
    compact.write(proj / "s-1" / "subagents" / "agent-acompact-1f2e.jsonl")
    warm = Transcript(sidechain=True, agent="77aa88bb")
    warm.user("Warmup")
    warm.text("Ready.", "w1")
    warm.write(proj / "agent-77aa88bb.jsonl")
    sessions, stats = load(*proj.rglob("*.jsonl"))
    assert set(sessions) == {"s-1", "s-1/a9f4657", "s-1/0c1d2e3f"}
    assert sessions["s-1/a9f4657"].meta["kind"] == "subagent" and sessions["s-1/a9f4657"].meta["parent"] == "s-1"
    assert stats.files["compaction_agent"] == 1 and stats.files["warmup_agent"] == 1
    only_main, _ = load(*proj.rglob("*.jsonl"), subagents=False)
    assert set(only_main) == {"s-1"}


def test_inline_sidechains_leave_the_main_conversation_whole(tmp_path):
    t = Transcript()
    t.user("Check the build")
    a = t.assistant({"type": "tool_use", "id": "toolu_t", "name": "Task", "input": {"prompt": "run make"}}, "m1")
    main_last = t.last
    side = Transcript(sidechain=True, agent="ab12cd34")
    side.n = 100
    side.user("run make")
    side.text("make: ok", "s1")
    t.events += side.events
    t.last = main_last
    t.result("toolu_t", "make: ok", parent=a)
    t.text("Build passes.", "m2")
    sessions, stats = load(t.write(tmp_path / "p" / "s-1.jsonl"))
    assert shape(sessions["s-1"].messages) == ["user", "assistant:tool_calls=1", "tool", "assistant:text"]
    assert [m["content"] for m in sessions["s-1/ab12cd34"].messages] == ["run make", "make: ok"]
    assert stats.orphan_results == 0


def test_a_resumed_copy_is_dropped_in_favour_of_the_file_that_continues_it(tmp_path):
    t = Transcript(session="old")
    t.user("Start the migration")
    t.text("Step one.", "m1")
    t.write(tmp_path / "p" / "old.jsonl")
    t.user("Go on")
    t.text("Step two.", "m2")
    t.write(tmp_path / "p" / "new.jsonl")
    sessions, stats = load(tmp_path / "p" / "old.jsonl", tmp_path / "p" / "new.jsonl")
    assert set(sessions) == {"new"} and stats.files["resumed_copy"] == 1


def test_a_failing_loop_needs_failures_not_the_word_error(tmp_path):
    t = Transcript()
    t.user("Investigate the error log")
    for k in range(3):
        a = t.call(f"toolu_{k}", "cat errors.log", f"m{k}")
        t.result(f"toolu_{k}", "ERROR: connection refused (an old error, fixed since)", parent=a)
    for k in range(3, 7):
        a = t.call(f"toolu_{k}", "pytest -x", f"m{k}")
        t.result(f"toolu_{k}", "Exit code 1\nFAILED test_x", parent=a, error=(k % 2 == 0))
    t.text("Giving up.", "m9")
    s = load(t.write(tmp_path / "p" / "s-1.jsonl"))[0]["s-1"]
    assert drop_reason(s, 1, None, 4) == "failing_loop"
    assert drop_reason(s, 1, None, 5) is None  # three reads of a log naming errors are not failures


def test_bad_lines_are_located_and_limits_hold(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_bytes(b'{"type": "user"}\n\xff\xfe not text\n')
    with pytest.raises(LoadError) as exc:
        claude_code.read_events(str(f), "fail", loaders.Skipped())
    assert exc.value.line == 2 and "not UTF-8" in exc.value.message
    skipped = loaders.Skipped()
    assert len(claude_code.read_events(str(f), "skip", skipped)) == 1 and skipped.items[0]["line"] == 2
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"type": "user", "message": {"content": "x" * 3000}}) + "\n")
    with pytest.raises(LoadError, match="limit on one event"):
        claude_code.read_events(str(big), "fail", loaders.Skipped(), max_bytes=1024)


def test_assistant_content_may_hold_bare_strings(tmp_path):
    t = Transcript()
    t.user("Hello")
    t._ev("assistant", message={"id": "m1", "role": "assistant", "content": ["plain string block"]})
    assert load(t.write(tmp_path / "p" / "s-1.jsonl"))[0]["s-1"].messages[1]["content"] == "plain string block"


@pytest.mark.parametrize("cwd,role,address", [
    ("/home/op/gt/mayor", "mayor", "mayor"),
    ("/home/op/gt", "mayor", "mayor"),
    ("/home/op/gt/deacon", "deacon", "deacon"),
    ("/home/op/gt/deacon/dogs/boot", "boot", "deacon-boot"),
    ("/home/op/gt/deacon/dogs/alpha/work", "dog", "deacon/dogs/alpha"),
    ("/home/op/gt/gastown/witness", "witness", "gastown/witness"),
    ("/home/op/gt/gastown/refinery/rig", "refinery", "gastown/refinery"),
    ("/home/op/gt/gastown/polecats/nux/gastown", "polecat", "gastown/polecats/nux"),
    ("/home/op/gt/beads/crew/max", "crew", "beads/crew/max"),
    ("/home/op/gt/gastown/mayor/rig", None, None),
    ("/home/op/gt/gastown", None, None),
    ("/home/op/gtx/mayor", None, None),
    ("/tmp/elsewhere", None, None),
])
def test_gastown_roles_and_addresses(cwd, role, address):
    agent = agent_of(cwd, "/home/op/gt/")
    assert (agent.role, agent.address) == (role, address) if role else agent is None

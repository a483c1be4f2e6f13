"""Eval: scorers, gates that fail the build with a report, and that the example's gates pass
because training worked."""

import json

import pytest

from conftest import artifact, run_formula
from formula.runtime.steps.eval import score


@pytest.mark.parametrize("scorer,output,case,passed", [
    ("exact", " Merged gt-1. ", {"expect": "Merged gt-1."}, True),
    ("exact", "Merged gt-2.", {"expect": "Merged gt-1."}, False),
    ("contains", "I'll start by running Bash.", {"expect": "running Bash"}, True),
    ("contains", "I'll start by running Read.", {"expect": "running Bash"}, False),
    ("regex", "bead gt-123 merged", {"expect": r"gt-\d+ merged"}, True),
    ("regex", "bead merged", {"expect": r"gt-\d+ merged"}, False),
    ("json_schema", '{"bead": "gt-1", "ok": true}',
     {"schema": {"type": "object", "required": ["bead"], "properties": {"ok": {"type": "boolean"}}}}, True),
    ("json_schema", '{"ok": "yes"}',
     {"schema": {"type": "object", "required": ["bead"]}}, False),
    ("json_schema", "not json", {"schema": {}}, False),
    ("tool_call", 'Sure.\n<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n</tool_call>', {}, True),
    ("tool_call", '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n</tool_call>',
     {"tool": "Read"}, False),
    ("tool_call", '<tool_call>\n{"name": "Read", "arguments": {"file_path": "a.py"}}\n</tool_call>',
     {"tool": "Read"}, True),
    ("tool_call", '<tool_call>\n{"name": "Bash", "arguments": "arguments": 1}\n</tool_call>', {}, False),
    ("tool_call", "no call here", {}, False),
])
def test_scorers(scorer, output, case, passed):
    assert score(scorer, output, case) is passed


def test_the_example_passes_its_gates(built_example):
    project, store = built_example
    report = json.loads((artifact(project, store, "eval.gate") / "eval.json").read_text())
    assert report["gates"] and all(g["passed"] for g in report["gates"]), report["gates"]
    for g in report["gates"]:
        print(f"\n{g['check']}: {g['detail']}")


def test_the_example_reports_next_action_per_role_with_intervals(built_example):
    project, store = built_example
    out = artifact(project, store, "eval.gate")
    report = json.loads((out / "eval.json").read_text())
    trained = report["metrics"]["next_action(sessions.holdout, max_new_tokens = 256, max_turns = 1000) of gguf.q8_0"]
    base = report["metrics"]["next_action(tiny, sessions.holdout, max_new_tokens = 256, max_turns = 1000) of tiny"]
    for m in (trained, base):
        assert m["turns"] == m["call_turns"] + m["reply_turns"] > 0 and m["sessions"] > 0
        for f in ("tool_accuracy", "args_exact", "args_similarity", "text_similarity", "stop_accuracy"):
            lo, hi = m["ci"][f]
            assert lo <= m[f] <= hi
        assert set(m["by_role"]) >= {"polecat", "refinery"} and m["by_outcome"]
        assert sum(r["turns"] for r in m["by_role"].values()) == m["turns"]
    assert trained["tool_accuracy"] >= 0.9 and base["tool_accuracy"] == 0
    assert trained["reused_tokens"] > 0  # the turns of a session share the KV cache
    gate = next(g for g in report["gates"] if g["check"].startswith("significant("))
    assert gate["passed"] and gate["significance"]["held"] and gate["significance"]["bound"] > 0
    turns = json.loads((out / "generations.json").read_text())
    assert len(next(v for k, v in turns.items() if k.startswith("next_action(sessions"))) == trained["turns"]
    text = (out / "report.md").read_text()
    assert "## Next action on holdout sessions" in text and "Per role" in text and "side by side" in text
    assert "&lt;tool_call&gt;" in text  # a call shown, not swallowed as an HTML tag
    build_report = (store / "reports" / "tiny" / "report.md").read_text()
    assert "### Next action on holdout sessions" in build_report


@pytest.fixture
def example_restored(built_example):
    """The shared example, put back as it was (formula text, latest build) after the test."""
    project, store = built_example
    text = (project / "tiny.formula").read_text()
    yield project, store
    (project / "tiny.formula").write_text(text)
    run_formula(project, store, "build", "tiny.formula", "--plain")


def test_a_failed_gate_fails_the_build_and_says_by_how_much(example_restored):
    project, store = example_restored
    text = (project / "tiny.formula").read_text()
    (project / "tiny.formula").write_text(text.replace(
        "<= 0.5 * perplexity(tiny, sessions.holdout)", "<= 0.0001 * perplexity(tiny, sessions.holdout)"))
    r = run_formula(project, store, "build", "tiny.formula", "--plain", check=False)
    assert r.returncode == 1
    assert "build failed: 1 built, 11 cached" in r.stderr  # only the eval ran again
    assert "check failed in eval.gate: perplexity(sessions.holdout) <= 0.0001" in r.stderr
    assert "off by" in r.stderr
    report = next(l.split(": ", 1)[1] for l in r.stderr.splitlines() if l.startswith("report: "))
    assert "**FAILED**" in open(report).read()
    # The failed eval is cached like any artifact: building again measures nothing and still fails.
    again = run_formula(project, store, "build", "tiny.formula", "--plain", check=False)
    assert again.returncode == 1 and "build failed: 12 cached" in again.stderr


def test_without_training_the_same_gates_fail(example_restored):
    """The thresholds are not loose: a learning rate of 1e-9 leaves the base model's weights
    as they were, and the gates catch it."""
    project, store = example_restored
    r = run_formula(project, store, "build", "tiny.formula", "--plain", "-j", "2",
                    "stage.lm.lr=1e-9", "var.lr=1e-9", check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    failed = [l for l in r.stderr.splitlines() if l.startswith("check failed")]
    print("\n" + "\n".join(failed))
    assert any("perplexity" in l for l in failed)
    # as good as the untrained model at picking tools (both never do): not a significant gain
    assert any("significant(next_action" in l and "not significant" in l for l in failed), failed
    assert any("prompts" in l for l in failed)

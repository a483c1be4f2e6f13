"""Outcome rules: the shipped Gas Town default on real-style records, rules files users write,
the errors a bad rules file gets, and the compiler's side (check and lowering)."""

import subprocess
import sys
import textwrap

import pytest

from formula.contract.outcome_rules import (DEFAULT_RULES, DEFAULT_TEXT, RulesError, load_rules,
                                            parse_rules)

from conftest import ROOT

T0 = "2026-03-01T13:55:02.118273-08:00"


def bead(**kw) -> dict:
    """A record shaped like a real `bd export` line (fields omitted when empty)."""
    rec = {"id": "gt-4kx9m", "title": "Fix merge queue stall on rebase conflict", "status": "closed",
           "priority": 2, "issue_type": "bug", "assignee": "gastown/polecats/nux",
           "created_at": T0, "updated_at": "2026-03-01T16:40:19.5522-08:00",
           "closed_at": "2026-03-01T16:40:19.5522-08:00", "created_by": "mayor"}
    rec.update(kw)
    return {k: v for k, v in rec.items() if v is not None}


# Close reasons as Gas Town's code writes them, and the class the default gives each.
REAL = [
    (bead(close_reason="Merged in gt-mr-8f2k"), "merged"),
    (bead(close_reason="Merged in gt-mr-8f2k\ntarget_branch: main\ncommit_sha: 4be1c0a9d2"), "merged"),
    (bead(issue_type="merge-request", title="Merge: gt-4kx9m", close_reason="merged"), "merged"),
    (bead(issue_type="molecule", close_reason="merged: close attached molecule"), "merged"),
    (bead(close_reason="PR created: #412"), "merged"),
    (bead(close_reason="Completed with no code changes (already fixed or pushed directly to main)"),
     "no_change"),
    (bead(close_reason="burned"), "burned"),
    (bead(close_reason="burned: force re-sling"), "burned"),
    (bead(close_reason="burned: polecat nuked"), "burned"),
    (bead(close_reason="stale:auto-closed by reaper", priority=3), "stale"),
    (bead(close_reason="Stale backlog sweep: no activity since December"), "stale"),
    (bead(close_reason="handoff"), "handoff"),
    (bead(close_reason="handoff: superseded by new session", issue_type="task"), "handoff"),
    (bead(close_reason="Patrol cycle complete: 3 polecats checked, 0 stuck"), "patrol"),
    (bead(title="Digest: mol-deacon-patrol", description="Patrol 17: stable", assignee=None), "patrol"),
    (bead(close_reason="closed"), "closed"),
    (bead(close_reason="Fixed in a4c2e1; see gt-9qz"), "closed"),
    (bead(), "closed"),                              # closed with no reason: the common case
    (bead(close_reason=""), "closed"),
    (bead(status="in_progress", closed_at=None), "open"),
    (bead(status="hooked", closed_at=None), "open"),
    (bead(status="pinned", closed_at=None), "open"),
    (bead(status="deferred", closed_at=None), "open"),
    (bead(status="blocked", closed_at=None), "open"),
    (bead(status="open", close_reason="burned", closed_at=None), "open"),  # reopened
    (bead(status="tombstone", deleted_by="daemon", delete_reason="delete"), "unknown"),
    (bead(status="tombstone", close_reason="Merged in gt-mr-1"), "merged"),
    (bead(status="review"), "unknown"),              # a custom status
    (bead(issue_type="message", labels=["gt:message"], status="open"), "ignore"),
    (bead(issue_type="agent", id="gt-gastown-polecat-nux"), "ignore"),
]


@pytest.mark.parametrize("record,expected", REAL, ids=[f"{i}-{c}" for i, (_, c) in enumerate(REAL)])
def test_the_default_classifies_real_close_reasons(record, expected):
    assert DEFAULT_RULES.classify(record) == expected


def test_missing_fields_take_beads_defaults():
    assert DEFAULT_RULES.classify({"id": "gt-1"}) == "open"          # no status: open
    assert DEFAULT_RULES.classify({"id": "gt-1", "status": "closed"}) == "closed"
    rules = parse_rules('[[rule]]\nclass = "work"\nissue_type = ["task"]\n', "r.toml")
    assert rules.classify({"id": "gt-1"}) == "work"                   # no issue_type: task
    assert rules.classify({"id": "gt-1", "issue_type": "bug"}) == "unknown"


def test_every_default_class_occurs_and_precedence_orders_them():
    classes = {c for _, c in REAL}
    assert classes == set(DEFAULT_RULES.precedence) | {"ignore"}
    assert DEFAULT_RULES.best(["merged", "burned", "closed"]) == "burned"
    assert DEFAULT_RULES.best(["open", "merged"]) == "merged"
    assert DEFAULT_RULES.best(["closed", "open"]) == "closed"
    assert DEFAULT_RULES.best([]) is None
    assert DEFAULT_RULES.rank("made-up") == len(DEFAULT_RULES.precedence)


def test_the_default_is_the_documented_toml():
    again = parse_rules(DEFAULT_TEXT, "default.toml")
    assert again.precedence == DEFAULT_RULES.precedence
    assert [r.cls for r in again.rules] == [r.cls for r in DEFAULT_RULES.rules]
    assert load_rules("") is DEFAULT_RULES


def test_a_users_rules_file():
    rules_text = textwrap.dedent(r'''
        precedence = ["failed", "landed", "noise", "closed"]

        [[rule]]
        class = "noise"
        issue_type = ["chore", "message"]

        [[rule]]
        class = "landed"
        close_reason = "^(merged in |merged\\b|pr created: #)"

        [[rule]]
        class = "failed"
        close_reason = '^burned\b|^stale'

        [[rule]]
        class = "failed"
        status = ["closed"]
        empty_reason = true
        title = "^wip"

        [[rule]]
        class = "closed"
        status = ["closed", "tombstone"]
        empty_reason = false
    ''')
    rules = parse_rules(rules_text, "ours.toml")
    assert rules.classify(bead(close_reason="MERGED in gt-mr-2")) == "landed"  # case-insensitive
    assert rules.classify(bead(close_reason="stale:auto-closed by reaper")) == "failed"
    assert rules.classify(bead(issue_type="chore", close_reason="Merged in x")) == "noise"
    assert rules.classify(bead(title="WIP: try the new scheduler")) == "failed"
    assert rules.classify(bead(title="Add retries")) == "unknown"     # empty reason, not wip
    assert rules.classify(bead(close_reason="done")) == "closed"
    assert rules.precedence == ("failed", "landed", "noise", "closed", "unknown")
    last = max(i for i, line in enumerate(rules_text.splitlines(), 1) if line == "[[rule]]")
    assert rules.match(bead(close_reason="done")).line == last


def test_without_precedence_the_default_order_is_kept_and_new_classes_follow():
    rules = parse_rules('[[rule]]\nclass = "weird"\nstatus = ["review"]\n'
                        '[[rule]]\nclass = "merged"\nclose_reason = "merged"\n'
                        '[[rule]]\nclass = "ignore"\nissue_type = ["event"]\n', "r.toml")
    assert rules.precedence == ("merged", "weird", "unknown")


BAD = [
    ("precedence = [\"merged\"\n[[rule]]\nclass = \"merged\"\n", 2, "not valid TOML"),
    ("[[rule]]\nclass = \"merged\"\nclose_reason = \"merged\"\n\n[[rule]\n", 5, "not valid TOML"),
    ("precedense = [\"merged\"]\n[[rule]]\nclass = \"merged\"\n", 1, "did you mean `precedence`"),
    ("[[rule]]\nclass = \"merged\"\n\n[[rule]]\nclass = \"burned\"\nclose_reasn = \"^burned\"\n", 6,
     "unknown key `close_reasn` in rule 2; did you mean `close_reason`"),
    ("[[rule]]\nclass = \"merged\"\nreason = \"x\"\n", 3, "did you mean `close_reason`"),
    ("[[rule]]\nclass = \"merged\"\ncolour = \"x\"\n", 3, "rule keys: class, close_reason"),
    ("[[rule]]\nclass = \"merged\"\nclose_reason = '^(merged'\n", 3, "invalid regular expression"),
    ("[[rule]]\nclass = \"patrol\"\ntitle = '[digest'\n", 3, "invalid regular expression in title"),
    ("[[rule]]\nclass = \"merged\"\n\n[[rule]]\nstatus = [\"closed\"]\n", 4, "rule 2 has no `class`"),
    ("precedence = [\"merged\", \"burned\"]\n[[rule]]\nclass = \"burnt\"\n", 3, "did you mean `burned`"),
    ("[[rule]]\nclass = \"merged\"\nstatus = 3\n", 3, "status must be a list of strings"),
    ("[[rule]]\nclass = \"merged\"\nempty_reason = \"yes\"\n", 3, "empty_reason must be true or false"),
    ("[[rule]]\nclass = 7\n", 2, "must be a name"),
    ("precedence = []\n", None, "no [[rule]] tables"),
]


@pytest.mark.parametrize("text,line,message", BAD)
def test_bad_rules_files_are_located(text, line, message):
    with pytest.raises(RulesError) as err:
        parse_rules(text, "rules.toml")
    assert err.value.path == "rules.toml"
    assert err.value.line == line, err.value
    assert message in err.value.message, err.value.message
    assert str(err.value).startswith(f"rules.toml:{line}: " if line else "rules.toml: ")


def test_load_rules_reads_a_file(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nclass = "merged"\nclose_reason = "merged"\n')
    assert load_rules(str(path)).classify(bead(close_reason="merged")) == "merged"
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(str(tmp_path / "nowhere.toml"))


def test_the_contract_imports_only_the_standard_library():
    code = ("import sys; import formula.contract.outcome_rules; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('formula'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.split()
    assert out == ["formula", "formula.contract", "formula.contract.outcome_rules"]


# --- the compiler's side ------------------------------------------------------------------------

FORMULA = '''formula t {
  description = "outcomes"
}

corpus sessions {
  source = gastown("projects", beads = "issues.jsonl"%s)
}
'''


def corpus_step(plan):
    from formula.compiler.lower import _Lowering

    lowering = _Lowering(plan)
    return lowering.steps[lowering.corpus("sessions")]


def compiled(tmp_path, extra: str):
    from formula.compiler.pipeline import compile_formula

    path = tmp_path / "t.formula"
    path.write_text(FORMULA % extra)
    (tmp_path / "projects").mkdir(exist_ok=True)  # `formula check` requires what the build reads
    (tmp_path / "issues.jsonl").touch()
    return compile_formula(str(path))


def test_check_accepts_a_good_rules_file_and_lowering_hashes_it(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "town.toml").write_text(DEFAULT_TEXT)
    result = compiled(tmp_path, ', outcomes = "rules/town.toml"')
    assert not result.diagnostics, result.diagnostics
    step = corpus_step(result.plan)
    assert step.files["source0_outcomes"].pattern == str(tmp_path / "rules" / "town.toml")
    assert not step.files["source0_outcomes"].is_glob
    assert step.config["sources"][0]["outcomes"] == str(tmp_path / "rules" / "town.toml")


def test_without_outcomes_the_shipped_rules_are_used(tmp_path):
    result = compiled(tmp_path, "")
    step = corpus_step(result.plan)
    assert "source0_outcomes" not in step.files
    assert step.config["sources"][0]["outcomes"] == ""


def test_check_reports_a_bad_rules_file_at_its_line(tmp_path):
    from formula.compiler.diagnostics import render_text

    (tmp_path / "town.toml").write_text('[[rule]]\nclass = "merged"\nclose_reason = "(("\n')
    result = compiled(tmp_path, ', outcomes = "town.toml"')
    assert [d.code for d in result.diagnostics] == ["outcome-rules"]
    d = result.diagnostics[0]
    assert d.span.line == 3 and d.span.source.path.endswith("town.toml")
    assert d.labels[0].span.source.path.endswith("t.formula") and d.labels[0].span.line == 6
    assert "invalid regular expression" in render_text(result.diagnostics)
    assert result.plan is None

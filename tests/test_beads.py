"""Linking sessions to beads records and their outcomes, on records shaped like real
`bd export` lines and sessions shaped like the Claude Code loader's output."""

import json
import time

import pytest

from formula.contract.outcome_rules import parse_rules
from formula.runtime.corpus.beads import (BeadIndex, beacon, link_outcomes, named_ids, parse_time,
                                          read_beads)
from formula.runtime.corpus.sessions import LoadError, Session


def bead(id, **kw) -> dict:
    rec = {"id": id, "title": f"Work item {id}", "status": "closed", "priority": 2,
           "issue_type": "task", "created_at": "2026-03-01T06:00:00.000000-08:00",
           "updated_at": "2026-03-01T09:00:00.5-08:00", "closed_at": "2026-03-01T09:00:00.5-08:00"}
    rec.update(kw)
    return {k: v for k, v in rec.items() if v is not None}


def call(command: str, i: int = 0) -> dict:
    return {"id": f"toolu_{i:02d}", "type": "function",
            "function": {"name": "Bash", "arguments": json.dumps({"command": command})}}


def session(id, *, agent=None, start=None, end=None, commands=(), first=None, uuid=None) -> Session:
    messages = [{"role": "user", "content": first or "Pick up the next item on your hook."}]
    for i, cmd in enumerate(commands):
        messages += [{"role": "assistant", "content": "", "tool_calls": [call(cmd, i)]},
                     {"role": "tool", "tool_call_id": f"toolu_{i:02d}", "content": "ok"}]
    messages.append({"role": "assistant", "content": "Done."})
    meta = {"role": "polecat", "session": uuid or id}
    meta.update({k: v for k, v in (("agent", agent), ("start", start), ("end", end)) if v})
    return Session(id, messages, meta)


NUX = "gastown/polecats/nux"
MORNING = dict(start="2026-03-01T14:10:00.000Z", end="2026-03-01T15:20:31.250Z")  # 06:10-07:20 -08:00


# --- reading -------------------------------------------------------------------------------------


def test_read_beads_tolerates_missing_and_unknown_fields(tmp_path):
    path = tmp_path / "issues.jsonl"
    path.write_text("\n".join([
        json.dumps({"id": "gt-01u", "title": "Bare", "priority": 2, "created_at": "2025-12-20T03:25:59.727107-08:00",
                    "updated_at": "2025-12-20T03:25:59.727107-08:00"}),
        "",
        json.dumps(bead("gt-00cu", compaction_level=1, wisp_future_field={"x": 1}, labels=["gt:keep"])),
    ]) + "\n")
    records = read_beads(str(path))
    assert [r["id"] for r in records] == ["gt-01u", "gt-00cu"]
    assert records[1]["wisp_future_field"] == {"x": 1}
    index = BeadIndex(records)
    assert index.classes == {"gt-01u": "open", "gt-00cu": "closed"}


@pytest.mark.parametrize("line,message", [
    ('{"id": "gt-1", "title": ', "not JSON"),
    ('["gt-1"]', "JSON object"),
    ('{"title": "no id"}', "needs an `id`"),
])
def test_a_bad_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "issues.jsonl"
    path.write_text(json.dumps(bead("gt-1")) + "\n" + json.dumps(bead("gt-2")) + "\n" + line + "\n")
    with pytest.raises(LoadError) as err:
        read_beads(str(path))
    assert (err.value.path, err.value.line) == (str(path), 3)
    assert message in err.value.message


def test_times_compare_across_offsets():
    assert parse_time("2026-03-01T22:38:47.557Z") == parse_time("2026-03-01T14:38:47.557-08:00")
    assert parse_time("2025-12-20T03:25:59.727107123-08:00") is not None  # Go's nanoseconds
    assert parse_time("2026-03-01T10:00:00").tzinfo is not None           # no offset: UTC
    assert parse_time("yesterday") is None and parse_time(None) is None


# --- what a session names -----------------------------------------------------------------------


def test_ids_come_from_bd_and_gt_commands_only():
    assert named_ids("bd close gt-4kx9m --reason 'Merged in gt-mr-8f2k'") == ["gt-4kx9m", "gt-mr-8f2k"]
    assert named_ids("cd ~/gt/gastown && BD_ACTOR=x bd update gt-h6eq.1 --status=in_progress") == ["gt-h6eq.1"]
    assert named_ids("/usr/local/bin/gt sling gt-00gyg gastown/polecats/nux") == ["gt-00gyg"]
    assert named_ids("git log --oneline gt-4kx9m; grep -r gt-01u .") == []
    assert named_ids("git status && gt hook") == []
    assert named_ids("bd show gt-4kx9m | head -20; rg gt-01u") == ["gt-4kx9m"]


def test_the_startup_beacon_gives_agent_and_assignment():
    s = session("s1", first="[GAS TOWN] gastown/polecats/nux <- witness • 2026-03-01T06:02 • assigned:gt-4kx9m\n\n"
                            "Run `gt hook` to see your work.")
    assert beacon(s) == (NUX, ["gt-4kx9m"])
    assert beacon(session("s2", first="[GAS TOWN] mayor/ <- deacon • 2026-03-01T06:02 • patrol")) == ("mayor", [])
    assert beacon(session("s3")) == ("", [])


# --- the three ways of linking -----------------------------------------------------------------


def test_closed_by_session_links_first():
    records = [bead("gt-4kx9m", close_reason="Merged in gt-mr-8f2k", closed_by_session="0f3c2a9e-uuid")]
    s = session("0f3c2a9e-uuid", commands=["bd show gt-4kx9m"])
    report = link_outcomes([s], records)
    assert s.meta["link"] == "closed_by_session" and s.meta["outcome"] == "merged"
    assert report.to_json()["links"] == {"closed_by_session": 1}


def test_named_ids_must_be_in_the_export():
    records = [bead("gt-4kx9m", close_reason="burned: polecat nuked")]
    s = session("s1", commands=["bd update gt-4kx9m --status=in_progress", "bd show gt-zzzzz"])
    link_outcomes([s], records)
    assert s.meta["beads"] == ["gt-4kx9m"] and s.meta["link"] == "named"
    assert s.meta["outcome"] == "burned"


def test_the_beacon_assignment_links():
    records = [bead("gt-4kx9m", close_reason="Merged in gt-mr-8f2k")]
    s = session("s1", first="[GAS TOWN] gastown/polecats/nux <- witness • 2026-03-01T06:02 • assigned:gt-4kx9m")
    link_outcomes([s], records)
    assert (s.meta["bead"], s.meta["link"], s.meta["outcome"]) == ("gt-4kx9m", "named", "merged")


def test_assignee_and_time_overlap_link():
    records = [bead("gt-4kx9m", assignee=NUX, close_reason="Merged in gt-mr-8f2k"),
               bead("gt-later", assignee=NUX, created_at="2026-03-01T10:00:00-08:00",
                    closed_at="2026-03-01T11:00:00-08:00", close_reason="burned"),
               bead("gt-other", assignee="gastown/polecats/furiosa", close_reason="burned")]
    s = session("s1", agent=NUX, **MORNING)
    link_outcomes([s], records)
    assert (s.meta["bead"], s.meta["beads"], s.meta["link"], s.meta["outcome"]) == \
        ("gt-4kx9m", ["gt-4kx9m"], "assignee_time", "merged")


@pytest.mark.parametrize("start,end,linked", [
    ("2026-03-01T13:00:00Z", "2026-03-01T14:00:00Z", True),    # ends exactly as the bead is created
    ("2026-03-01T13:00:00Z", "2026-03-01T13:59:59Z", False),   # ends before it
    ("2026-03-01T17:00:00.5Z", "2026-03-01T18:00:00Z", True),  # starts exactly as it closes
    ("2026-03-01T17:00:01Z", "2026-03-01T18:00:00Z", False),   # starts after it closed
    ("2026-03-01T12:00:00Z", "2026-03-01T20:00:00Z", True),    # spans the whole window
    ("2026-03-01T15:00:00Z", None, True),                      # start only
    (None, "2026-03-01T15:00:00Z", True),                      # end only
    (None, None, False),                                       # no times: no time link
    ("2026-03-01T07:00:00+05:00", "2026-03-01T08:00:00+05:00", False),  # inside by the clock only
])
def test_overlap_edges(start, end, linked):
    records = [bead("gt-4kx9m", assignee=NUX, close_reason="Merged in gt-mr-8f2k")]  # 14:00-17:00.5Z
    s = session("s1", agent=NUX, start=start, end=end)
    link_outcomes([s], records)
    assert ("bead" in s.meta) == linked


def test_an_open_bead_is_open_ended_and_addresses_are_normalised():
    records = [bead("hq-7rm2", status="hooked", closed_at=None, assignee="mayor/",
                    created_at="2026-02-01T00:00:00-08:00")]
    s = session("s1", agent="mayor", start="2026-03-09T10:00:00Z", end="2026-03-09T11:00:00Z")
    link_outcomes([s], records)
    assert (s.meta["bead"], s.meta["outcome"]) == ("hq-7rm2", "open")


def test_a_closed_bead_without_close_times_is_not_open_ended():
    records = [bead("gt-4kx9m", assignee=NUX, closed_at=None, updated_at=None, close_reason="burned")]
    late = session("s1", agent=NUX, start="2026-03-05T10:00:00Z", end="2026-03-05T11:00:00Z")
    early = session("s2", agent=NUX, start="2026-03-01T13:30:00Z", end="2026-03-01T14:30:00Z")
    link_outcomes([late, early], records)
    assert "bead" not in late.meta and early.meta["outcome"] == "burned"


def test_the_beacon_stands_in_for_a_missing_agent():
    records = [bead("gt-4kx9m", assignee=NUX, close_reason="Merged in gt-mr-8f2k")]
    s = session("s1", first="[GAS TOWN] gastown/polecats/nux <- witness • 2026-03-01T06:12 • start", **MORNING)
    link_outcomes([s], records)
    assert s.meta["link"] == "assignee_time"


def test_mail_and_agent_beads_never_link():
    records = [bead("hq-msg1", issue_type="message", assignee="gastown/witness", status="open", closed_at=None,
                    labels=["gt:message"]),
               bead("gt-gastown-witness", issue_type="agent", assignee="gastown/witness")]
    s = session("s1", agent="gastown/witness", commands=["gt mail read hq-msg1"], **MORNING)
    report = link_outcomes([s], records)
    assert "bead" not in s.meta and report.unlinked == ["s1"]


def test_the_strongest_link_is_recorded():
    records = [bead("gt-4kx9m", assignee=NUX, close_reason="Merged in gt-mr-8f2k")]
    s = session("s1", agent=NUX, commands=["bd show gt-4kx9m"], **MORNING)
    link_outcomes([s], records)
    assert s.meta["link"] == "named"


# --- molecules, steps and merge requests stand for their work bead -----------------------------


def work_and_molecule(link: str) -> list[dict]:
    work = bead("gt-4kx9m", assignee="gastown/polecats/furiosa", close_reason="Merged in gt-mr-8f2k",
                description="Refinery stalls on rebase conflicts.")
    mol = bead("gt-wisp-7hq2", issue_type="molecule", title="mol-polecat-work", close_reason="burned: force re-sling",
               assignee=NUX)
    if link == "attached":
        work["description"] += ("\n\nattached_molecule: gt-wisp-7hq2\nattached_formula: mol-polecat-work\n"
                                "attached_at: 2026-03-01T14:02:11Z\ndispatched_by: mayor")
    else:
        work["dependencies"] = [{"issue_id": "gt-4kx9m", "depends_on_id": "gt-wisp-7hq2", "type": link,
                                 "created_at": "2026-03-01T06:02:11-08:00", "created_by": "mayor"}]
    return [work, mol]


@pytest.mark.parametrize("link", ["attached", "blocks", "parent-child"])
def test_a_burned_molecule_maps_to_its_work_bead_and_burned_wins(link):
    s = session("s1", agent=NUX, commands=["gt mol status", "bd close gt-wisp-7hq2"], **MORNING)
    link_outcomes([s], work_and_molecule(link))
    assert s.meta["bead"] == "gt-4kx9m"                      # the work bead, not the wisp
    assert s.meta["beads"] == ["gt-4kx9m", "gt-wisp-7hq2"]
    assert s.meta["outcome"] == "burned"                      # burned beats the later merge


def test_a_dependency_between_two_work_beads_is_not_a_molecule():
    records = [bead("gt-a1b", close_reason="Merged in gt-mr-1",
                    dependencies=[{"issue_id": "gt-a1b", "depends_on_id": "gt-c2d", "type": "blocks"}]),
               bead("gt-c2d", close_reason="burned")]
    assert BeadIndex(records).work_of == {}


def test_molecule_steps_and_merge_requests_map_to_the_work_bead():
    records = work_and_molecule("attached") + [
        bead("gt-wisp-7hq2.3", title="Run the tests", source_formula="mol-polecat-work", status="closed"),
        bead("gt-wisp-7hq2.4", title="Submit", status="closed",
             dependencies=[{"issue_id": "gt-wisp-7hq2.4", "depends_on_id": "gt-wisp-7hq2", "type": "parent-child"}]),
        bead("gt-mr-8f2k", issue_type="merge-request", title="Merge: gt-4kx9m", close_reason="merged",
             description="branch: polecat/nux/gt-4kx9m\ntarget: main\nsource_issue: gt-4kx9m\nworker: nux"),
        bead("gt-mr-9a1b", issue_type="merge-request", title="Merge: gt-4kx9m"),
    ]
    index = BeadIndex(records)
    for child in ("gt-wisp-7hq2", "gt-wisp-7hq2.3", "gt-wisp-7hq2.4", "gt-mr-8f2k", "gt-mr-9a1b"):
        assert index.work_bead(child) == "gt-4kx9m", child
    refinery = session("r1", agent="gastown/refinery",
                       commands=["gt mq list", "bd close gt-mr-8f2k --reason merged"])
    link_outcomes([refinery], index)
    assert (refinery.meta["bead"], refinery.meta["outcome"]) == ("gt-4kx9m", "merged")


# --- a session that touches several beads --------------------------------------------------------


def test_precedence_over_several_beads_and_the_primary_bead():
    records = [bead("gt-aaa", close_reason="Merged in gt-mr-1"),
               bead("gt-bbb", status="in_progress", closed_at=None),
               bead("gt-ccc", close_reason="stale:auto-closed by reaper")]
    s = session("s1", commands=["bd show gt-bbb && bd show gt-ccc", "bd close gt-aaa"])
    link_outcomes([s], records)
    assert s.meta["outcome"] == "merged" and s.meta["bead"] == "gt-aaa"
    assert s.meta["beads"] == ["gt-aaa", "gt-bbb", "gt-ccc"]
    rules = parse_rules('precedence = ["stale", "merged", "open"]\n'
                        '[[rule]]\nclass = "open"\nstatus = ["in_progress"]\n'
                        '[[rule]]\nclass = "merged"\nclose_reason = "^merged"\n'
                        '[[rule]]\nclass = "stale"\nclose_reason = "^stale"\n', "ours.toml")
    s2 = session("s2", commands=["bd show gt-bbb && bd show gt-ccc", "bd close gt-aaa"])
    link_outcomes([s2], records, rules)
    assert s2.meta["outcome"] == "stale" and s2.meta["bead"] == "gt-ccc"


def test_the_report_counts_classes_methods_and_the_unlinked():
    records = [bead("gt-aaa", close_reason="Merged in gt-mr-1", assignee=NUX),
               bead("gt-bbb", close_reason="burned: polecat nuked"),
               bead("gt-ccc", close_reason="Reverted upstream"),
               bead("gt-ddd", close_reason="Reverted upstream"),
               bead("hq-msg", issue_type="message", status="open", closed_at=None)]
    sessions = [session("s1", agent=NUX, **MORNING), session("s2", commands=["bd close gt-bbb"]),
                session("s3", commands=["bd close gt-ccc"]), session("s4"), session("s5", agent=NUX)]
    report = link_outcomes(sessions, records).to_json()
    assert report["sessions"] == 5 and report["linked"] == 3
    assert report["outcomes"] == {"burned": 1, "closed": 1, "merged": 1}
    assert report["links"] == {"named": 2, "assignee_time": 1}
    assert report["unlinked"] == ["s4", "s5"]
    assert report["beads"]["records"] == 5
    assert report["beads"]["classes"] == {"burned": 1, "closed": 2, "ignore": 1, "merged": 1}
    assert report["beads"]["other_reasons"] == [["Reverted upstream", 2]]
    assert all("outcome" not in s.meta and "bead" not in s.meta for s in sessions[3:])
    json.dumps(report)


def test_linking_is_fast_on_an_export_of_real_size():
    agents = [f"gastown/polecats/p{i}" for i in range(60)] + ["gastown/refinery", "gastown/witness", "mayor"]
    records = []
    for i in range(40_000):
        day, hour = divmod(i, 24)
        records.append(bead(f"gt-{i:05x}", assignee=agents[i % len(agents)],
                            created_at=f"2026-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}T{hour:02d}:00:00-08:00",
                            closed_at=f"2026-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}T{hour:02d}:40:00-08:00",
                            close_reason=("Merged in gt-mr", "burned", "", "closed")[i % 4]))
    sessions = [session(f"s{i}", agent=agents[i % len(agents)], start="2026-02-03T10:00:00Z",
                        end="2026-02-03T12:00:00Z", commands=[f"bd show gt-{i:05x}", "git status"] * 5)
                for i in range(3_000)]
    began = time.perf_counter()
    report = link_outcomes(sessions, records)
    took = time.perf_counter() - began
    assert report.sessions == 3_000 and not report.unlinked
    assert took < 5, f"{took:.1f} s"

"""Writes the example's Gas Town data as Claude Code and beads write theirs (synthetic content,
real structure), deterministic so the committed files regenerate byte for byte:

    python examples/data/generate.py                 # the example's data, here
    python examples/data/generate.py OUT --scale 40  # 40 times as many sessions, for bench/corpus

Layout, as Gas Town leaves it on disk:
    projects/<cwd, "/" and "." as "-">/<session-uuid>.jsonl   Claude Code 2.1 (and some 2.0) events
    projects/<...>/<session-uuid>/subagents/agent-<id>.jsonl   2.1 subagents (+ .meta.json)
    projects/<...>/agent-<8 hex>.jsonl                          2.0 subagents, flat beside the session
    beads/issues.jsonl                                         a beads export

What real data has and this data has too: assistant messages written one content block per line
(thinking, text, tool_use share a `message.id`), parallel tool calls hanging off each other,
`toolUseResult` payloads, snapshots and queue events, meta caveats and slash commands, a
synthetic API error, an interrupted tool use, an image-only turn, ANSI-coloured test output,
rewinds, compactions with a compaction agent, subagents in both layouts, Gas Town startup
beacons naming the bead, and beads closed with Gas Town's real reasons: a polecat whose tests
keep failing is burned (`burned: force re-sling` on its molecule) and the bead is re-slung to
another polecat who gets it merged (`Merged in <mr>`), which is what preference pairs by bead
need. Some tool output carries planted secrets and PII for the scrubber to find.
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOWN = "/home/op/gt"
RIGS = ("gastown", "beads")
PREFIX = {"gastown": "gt", "beads": "bd"}
SEED = 20261202
VERSIONS = ("2.1.63", "2.1.72", "2.0.46")
PACIFIC = timezone(timedelta(hours=-8))

NAMES = ("nux", "slit", "toast", "furiosa", "ace", "joe")
MODULES = ("store", "graph", "lexer", "parser", "hashing", "scheduler", "cache", "config")

PLANTED = (
    "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "export GITHUB_TOKEN=ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "contact: maintainer.jane@example.org for access",
    "ssh deploy@10.20.30.40 -i /home/alice/.ssh/id_ed25519",
    "call +1 415-555-0134 if the pager fires",
    "DATABASE_URL=postgres://admin:hunter2pass@db.internal:5432/prod",
    "SLACK_WEBHOOK=https://hooks.slack.com/services/T0001/B0001/XXXXXXXXXXXXXXXXXXXXXXXX",
    "slack bot token xoxb-2837465019-9384756102-AbCdEfGhIjKlMnOpQrStUvWx",
    "OPENAI_API_KEY=sk-proj-Q2w3E4r5T6y7U8i9O0pAsDfGhJkLzXcVbNm1234",
    "ANTHROPIC_API_KEY=sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa-AbCdEf",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwb2xlY2F0In0.Qm9ndXNTaWduYXR1cmVWYWx1ZTEyMw",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n-----END RSA PRIVATE KEY-----",
    "DB_PASSWORD=Tr0ub4dor&3xample",
    'config = {"client_secret": "8f14e45fceea167a5a36dedd4bea2543f1c2b3a4"}',
    "metrics pushed from 192.168.17.42 and 2001 retries",
    "see /Users/bob/projects/gastown and C:\\Users\\carol\\notes.txt",
)

# (prompt, tool, input, result, answer) per role; the answers are what the eval prompts expect.
TASKS = {
    "polecat": [
        ("Implement {m} retries in the {rig} {m} module and run its tests.",
         "Bash", {"command": "pytest tests/test_{m}.py -q"}, "12 passed in 0.41s",
         "Retries are in place in {m}; the 12 tests in tests/test_{m}.py pass. Ready for merge."),
        ("Fix the off-by-one in {m}.py that bead {bead} reports.",
         "Edit", {"file_path": "src/{m}.py", "old_string": "range(n - 1)", "new_string": "range(n)"},
         "The file src/{m}.py has been updated.",
         "Fixed the loop bound in src/{m}.py; the failing case from {bead} now passes."),
    ],
    "mayor": [
        ("Plan the convoy for the {rig} {m} rewrite.",
         "Bash", {"command": "bd list --status open --label {m}"}, "{bead} open  rewrite {m}\n",
         "Convoy planned: {bead} goes to a polecat on {rig}; the witness watches it to merge."),
        ("Which beads block the {rig} release?",
         "Bash", {"command": "bd blocked"}, "{bead} blocked by {bead}.1",
         "One bead blocks the release: {bead}, waiting on its dependency. I slung it to a polecat."),
    ],
    "witness": [
        ("Check on the polecats working in {rig}.",
         "Bash", {"command": "gt polecat list {rig}"}, "nux  working  {bead}\nslit idle",
         "nux is working on {bead} and making progress; slit is idle and can take new work."),
    ],
    "refinery": [
        ("Merge the queue for {rig}.",
         "Bash", {"command": "gt mq list {rig}"}, "{bead}  ready  polecat/nux",
         "Merged {bead} from polecat/nux into main after the tests passed; the queue is empty."),
    ],
    "crew": [
        ("Review the {m} change on my branch.",
         "Read", {"file_path": "src/{m}.py"}, "     1→def {m}(x):\n     2→    return x\n",
         "The {m} change looks right: the function is small and its tests cover both branches."),
    ],
    "deacon": [
        ("Run the deacon patrol.",
         "Bash", {"command": "gt deacon patrol"}, "patrol 17: 2 rigs healthy, 0 stuck agents",
         "Patrol done: both rigs are healthy and no agent is stuck."),
    ],
    "boot": [
        ("Is the deacon alive?",
         "Bash", {"command": "gt deacon status"}, "deacon: running (pid 4242), last patrol 3m ago",
         "The deacon is running and patrolled three minutes ago; nothing to do."),
    ],
    "dog": [
        ("Reap stale beads.",
         "Bash", {"command": "gt reaper run"}, "closed 3 stale beads",
         "Reaped three stale beads."),
    ],
}
ANSI_TEST = ("\x1b[1m> {m}@1.0.0 test\x1b[22m\n\x1b[32m  ✓\x1b[39m {m} round-trips\n"
             "\x1b[32m  ✓\x1b[39m {m} retries on error\n\n\x1b[32m  2 passing\x1b[39m \x1b[90m(41ms)\x1b[39m")


def cwd_of(role: str, rig: str, name: str) -> str:
    return {"mayor": f"{TOWN}/mayor", "deacon": f"{TOWN}/deacon", "boot": f"{TOWN}/deacon/dogs/boot",
            "dog": f"{TOWN}/deacon/dogs/{name}", "polecat": f"{TOWN}/{rig}/polecats/{name}/{rig}",
            "witness": f"{TOWN}/{rig}/witness", "refinery": f"{TOWN}/{rig}/refinery/rig",
            "crew": f"{TOWN}/{rig}/crew/{name}", "clone": f"{TOWN}/{rig}/mayor/rig"}[role]


def address_of(role: str, rig: str, name: str) -> str:
    return {"mayor": "mayor", "deacon": "deacon", "boot": "deacon-boot", "dog": f"deacon/dogs/{name}",
            "polecat": f"{rig}/polecats/{name}", "crew": f"{rig}/crew/{name}"}.get(role, f"{rig}/{role}")


def stamp(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bead_stamp(ts: datetime) -> str:
    return ts.astimezone(PACIFIC).isoformat(timespec="microseconds")


class Writer:
    """One transcript, written in Claude Code's key order with a uuid chain."""

    def __init__(self, rng: random.Random, session: str, cwd: str, branch: str, version: str, ts: datetime,
                 agent: str | None = None):
        self.rng, self.session, self.cwd, self.branch, self.version = rng, session, cwd, branch, version
        self.ts, self.agent = ts, agent
        self.lines: list[dict] = []
        self.last: str | None = None

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def tick(self, lo=1, hi=20) -> str:
        self.ts += timedelta(seconds=self.rng.randint(lo, hi), milliseconds=self.rng.randint(0, 999))
        return stamp(self.ts)

    def event(self, kind: str, parent="last", **body) -> str:
        u = self.uid()
        ev = {"parentUuid": self.last if parent == "last" else parent, "isSidechain": self.agent is not None,
              "userType": "external", "cwd": self.cwd, "sessionId": self.session, "version": self.version,
              "gitBranch": self.branch}
        if self.agent:
            ev["agentId"] = self.agent
        ev["type"] = kind
        ev.update(body)
        ev["uuid"] = u
        ev["timestamp"] = self.tick()
        self.lines.append(ev)
        self.last = u
        return u

    def user(self, content, parent="last", **extra) -> str:
        return self.event("user", parent, message={"role": "user", "content": content}, **extra)

    def assistant(self, blocks: list[dict], parent="last") -> str:
        """One API message: one line per content block, sharing the message id."""
        mid = f"msg_01{self.rng.getrandbits(96):024x}"
        req = f"req_011{self.rng.getrandbits(96):024x}"
        for i, block in enumerate(blocks):
            last = i == len(blocks) - 1
            stop = ("tool_use" if block["type"] == "tool_use" else "end_turn") if last else None
            self.event("assistant", parent if i == 0 else "last", message={
                "model": "claude-opus-4-6", "id": mid, "type": "message", "role": "assistant", "content": [block],
                "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": 6, "cache_read_input_tokens": 21000, "output_tokens": 180}},
                requestId=req)
        return self.last

    def call(self, name: str, input_: dict) -> dict:
        return {"type": "tool_use", "id": f"toolu_01{self.rng.getrandbits(96):024x}", "name": name, "input": input_}

    def result(self, call: dict, text, parent: str, error=False, payload=None) -> str:
        block = {"tool_use_id": call["id"], "type": "tool_result", "content": text}
        if error:
            block["is_error"] = True
        payload = payload if payload is not None else (
            {"stdout": text, "stderr": "", "interrupted": False, "isImage": False} if call["name"] == "Bash"
            else {"type": "text", "file": {"filePath": call["input"].get("file_path", ""), "content": text}})
        return self.user([block], parent, toolUseResult=payload, sourceToolAssistantUUID=parent)

    def side(self, kind: str, **body) -> None:
        """Lines outside the chain (no uuid): snapshots, queue operations."""
        self.lines.append({"type": kind, **body})

    def system(self, subtype: str, parent="last", **body) -> str:
        return self.event("system", parent, subtype=subtype, isMeta=False, level="info", **body)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            for ev in self.lines:
                fh.write(json.dumps(ev, ensure_ascii=False) + "\n")


class Town:
    def __init__(self, out: Path, scale: int):
        self.rng = random.Random(SEED)
        self.out, self.scale = out, scale
        self.projects, self.beads = out / "projects", []
        self.ts = datetime(2026, 10, 1, 16, 0, tzinfo=timezone.utc)
        self.n = 0

    def bead_id(self, rig: str) -> str:
        return f"{PREFIX.get(rig, 'hq')}-{self.rng.getrandbits(25):07x}"[:8]

    def fmt(self, text: str, **kw) -> str:
        for k, v in kw.items():
            text = text.replace("{" + k + "}", v)
        return text

    def plant(self) -> str | None:
        self.n += 1
        return PLANTED[self.n % len(PLANTED)] if self.n % 4 == 0 else None

    def record(self, bead: str, title: str, status: str, start: datetime, end: datetime | None, **kw) -> dict:
        rec = {"id": bead, "title": title, "description": kw.pop("description", ""), "status": status,
               "priority": kw.pop("priority", 2), "issue_type": kw.pop("issue_type", "task")}
        if kw.get("assignee"):
            rec["assignee"] = kw.pop("assignee")
        rec["created_at"] = bead_stamp(start)
        rec["created_by"] = kw.pop("created_by", "mayor")
        rec["updated_at"] = bead_stamp(end or start + timedelta(minutes=5))
        if status == "closed" and end is not None:
            rec["closed_at"] = bead_stamp(end)
            reason = kw.pop("close_reason", None)
            if reason:
                rec["close_reason"] = reason
        rec.update({k: v for k, v in kw.items() if v is not None})
        self.beads.append(rec)
        return rec

    def folder(self, cwd: str) -> Path:
        return self.projects / cwd.replace("/", "-").replace(".", "-")

    # --- sessions ---------------------------------------------------------------------------

    def session(self, role: str, rig: str, name: str, bead: str, *, failing=False, same=None, features=()):
        rng = self.rng
        sid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        cwd = cwd_of(role, rig, name)
        version = "2.0.46" if "v20" in features else rng.choice(VERSIONS[:2])
        w = Writer(rng, sid, cwd, f"polecat/{name}" if role == "polecat" else "main", version, self.ts)
        w.side("file-history-snapshot", messageId=w.uid(), snapshot={"messageId": w.uid(), "trackedFileBackups": {},
                                                                     "timestamp": stamp(self.ts)}, isSnapshotUpdate=False)
        m, task = same or (rng.choice(MODULES), rng.choice(TASKS["polecat" if role == "clone" else role]))
        kw = {"m": m, "rig": rig, "bead": bead}
        prompt, tool, tool_input, result, answer = (
            self.fmt(task[0], **kw), task[1], json.loads(self.fmt(json.dumps(task[2]), **kw)),
            self.fmt(task[3], **kw), self.fmt(task[4], **kw))
        plant = self.plant()
        if plant:
            result += "\n" + plant
        if "commands" in features:
            w.user("<local-command-caveat>Caveat: The messages below were generated by the user while running "
                   "local commands. DO NOT respond to these messages or otherwise consider them in your "
                   "response unless the user explicitly asks you to.</local-command-caveat>", isMeta=True)
            w.user("<command-name>/model</command-name>\n            <command-message>model</command-message>\n"
                   "            <command-args>opus</command-args>")
            w.user("<local-command-stdout>Set model to \x1b[1mopus (claude-opus-4-6)\x1b[22m</local-command-stdout>")
        if role == "polecat":
            sender = "witness" if not same else "mayor"
            prompt = (f"[GAS TOWN] {address_of(role, rig, name)} <- {sender} • "
                      f"{self.ts.astimezone(PACIFIC).strftime('%Y-%m-%dT%H:%M')} • assigned:{bead}\n\n{prompt}")
        w.side("queue-operation", operation="dequeue", timestamp=stamp(self.ts), sessionId=sid)
        first = w.user(prompt, permissionMode="default", promptId=w.uid())
        if "rewind" in features:  # an answer the user rewound: the branch stays in the file, first
            w.assistant([{"type": "text", "text": f"I will rewrite the whole {m} module from scratch."}])
            w.user("No, that is far too much; stop.")
            w.assistant([{"type": "text", "text": "Stopped."}])
            w.last = first
            w.tick(60, 120)
        thinking = {"type": "thinking", "thinking": f"The {m} task needs {tool} first.",
                    "signature": "Eo8D" + "".join(rng.choice("ABCDEFGHabcdefgh0123456789+/") for _ in range(40))}
        if failing:
            command = f"pytest tests/test_{m}.py -q"
            for k in range(rng.randint(4, 5)):
                call = w.call("Bash", {"command": command, "description": f"Run the {m} tests"})
                at = w.assistant(([thinking] if k == 0 else []) + [{"type": "text", "text": "Let me run the tests again."}, call])
                w.result(call, f"Exit code 1\nFAILED tests/test_{m}.py::test_roundtrip - AssertionError", at,
                         error=True, payload="Error: Exit code 1")
            w.assistant([{"type": "text", "text": "The tests still fail; I am giving up on this bead."}])
            return sid, cwd, w, (m, task)
        call = w.call(tool, tool_input)
        blocks = [thinking, {"type": "text", "text": f"I'll start by running {tool}."}, call]
        if "parallel" in features:
            second = w.call("Grep", {"pattern": f"def {m}", "path": "src"})
            blocks.append(second)
        at = w.assistant(blocks)
        if "parallel" in features:
            first_call_line = w.lines[-2]["uuid"]
            w.result(call, result, first_call_line)
            last = w.result(second, f"src/{m}.py:1:def {m}(x):", at,
                            payload={"mode": "content", "numFiles": 1, "filenames": [f"src/{m}.py"]})
        else:
            last = w.result(call, result, at)
        if "ansi" in features:
            npm = w.call("Bash", {"command": "npm test"})
            at = w.assistant([npm], parent=last)
            last = w.result(npm, self.fmt(ANSI_TEST, m=m), at)
        if "subagent" in features:
            agent = f"{rng.getrandbits(32):08x}" if "v20" in features else f"a{rng.getrandbits(24):06x}"
            task_call = w.call("Task", {"description": f"Survey {m}", "prompt": f"List the callers of {m}.",
                                        "subagent_type": "Explore"})
            at = w.assistant([task_call], parent=last)
            sub = Writer(rng, sid, cwd, w.branch, version, w.ts, agent=agent)
            sub.user(f"List the callers of {m}.")
            grep = sub.call("Grep", {"pattern": f"{m}\\(", "path": "src"})
            sat = sub.assistant([grep])
            found = f"src/graph.py:12: {m}(node)\nsrc/cache.py:40: {m}(key)"
            if plant:
                found += "\n" + plant
            sub.result(grep, found, sat, payload={"mode": "content", "numFiles": 2, "note": plant or ""})
            sub.assistant([{"type": "text", "text": f"{m} is called from graph.py and cache.py."}])
            w.ts = sub.ts
            last = w.result(task_call, [{"type": "text", "text": f"{m} is called from graph.py and cache.py."}], at,
                            payload={"status": "completed", "agentId": agent, "agentType": "Explore",
                                     "totalDurationMs": 5200, "totalToolUseCount": 1})
            if "v20" in features:
                sub.write(self.folder(cwd) / f"agent-{agent}.jsonl")
            else:
                sub.write(self.folder(cwd) / sid / "subagents" / f"agent-{agent}.jsonl")
                (self.folder(cwd) / sid / "subagents" / f"agent-{agent}.meta.json").write_text(
                    json.dumps({"agentType": "Explore", "toolUseId": task_call["id"]}))
        if "interrupt" in features:
            rm = w.call("Bash", {"command": "rm -rf build/"})
            at = w.assistant([rm], parent=last)
            w.result(rm, "The user doesn't want to proceed with this tool use. The tool use was rejected "
                     "(eg. if it was a file edit, the new_string was NOT written to the file). STOP what you are "
                     "doing and wait for the user to tell you how to proceed.", at, error=True,
                     payload="Error: The user doesn't want to proceed with this tool use.")
            w.user([{"type": "text", "text": "[Request interrupted by user for tool use]"}])
            last = w.user("Keep the build folder.")
        if "image" in features:
            last = w.user([{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                        "data": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"}}])
        if "api_error" in features:
            w.event("assistant", message={"id": str(uuid.UUID(int=rng.getrandbits(128))), "model": "<synthetic>",
                                          "role": "assistant", "stop_reason": "stop_sequence", "type": "message",
                                          "content": [{"type": "text", "text": "Limit reached · resets 3pm"}]},
                    isApiErrorMessage=True, error="rate_limit")
            w.system("api_error", error={"status": 429}, retryInMs=30000, retryAttempt=1, maxRetries=10)
            last = w.user("Continue.")
        if "compact" in features:
            w.assistant([{"type": "text", "text": f"Halfway there on {m}."}], parent=last)
            before = w.last
            w.system("compact_boundary", parent=None, content="Conversation compacted", logicalParentUuid=before,
                     compactMetadata={"trigger": "auto", "preTokens": 167000})
            w.user(f"This session is being continued from a previous conversation that ran out of context. "
                   f"Summary:\n1. Primary Request: {prompt.splitlines()[-1]}\n2. Progress: {tool} done.",
                   isCompactSummary=True, isVisibleInTranscriptOnly=True)
            last = w.user("Please finish up.")
            compact = Writer(rng, sid, cwd, w.branch, version, w.ts, agent=f"acompact-{rng.getrandbits(24):06x}")
            compact.user("Your task is to create a detailed summary of the conversation so far.")
            compact.assistant([{"type": "text", "text": f"<summary>Working on {m}.</summary>"}])
            compact.write(self.folder(cwd) / sid / "subagents" / f"agent-{compact.agent}.jsonl")
        if role == "polecat":
            done = w.call("Bash", {"command": "gt done"})
            at = w.assistant([done], parent=last)
            last = w.result(done, f"✓ Pushed polecat/{name}\n✓ MR created for {bead}\n✓ Notified {rig}/witness", at)
        w.assistant([{"type": "text", "text": answer}], parent=last)
        w.system("turn_duration", durationMs=rng.randint(9000, 90000), messageCount=len(w.lines))
        return sid, cwd, w, (m, task)

    def write_session(self, sid: str, cwd: str, w: Writer) -> None:
        w.write(self.folder(cwd) / f"{sid}.jsonl")
        self.ts = w.ts + timedelta(minutes=self.rng.randint(5, 40))

    # --- the town ---------------------------------------------------------------------------

    def polecat_work(self, rig: str, features=()) -> None:
        rng = self.rng
        bead = self.bead_id(rig)
        start = self.ts - timedelta(minutes=3)
        name = rng.choice(NAMES)
        burned_first = rng.random() < 0.45
        spec = None
        deps = []
        if burned_first:  # the first polecat loops on failing tests; the bead is re-slung
            sid, cwd, w, spec = self.session("polecat", rig, name, bead, failing=True)
            self.write_session(sid, cwd, w)
            mol = self.bead_id(rig)
            self.record(mol, "mol-polecat-work", "closed", start, w.ts + timedelta(minutes=1),
                        issue_type="molecule", assignee=address_of("polecat", rig, name),
                        close_reason="burned: force re-sling", created_by="witness")
            deps.append({"issue_id": bead, "depends_on_id": mol, "type": "blocks",
                         "created_at": bead_stamp(start), "created_by": "witness"})
            name = rng.choice([n for n in NAMES if n != name])
        sid, cwd, w, _ = self.session("polecat", rig, name, bead, same=spec, features=features)
        self.write_session(sid, cwd, w)
        self.pending_mrs.append({"rig": rig, "bead": bead, "name": name, "start": start, "done": w.ts, "deps": deps})

    def refinery_run(self, rig: str) -> None:
        """The refinery merges the oldest merge request of its rig; the records close with it."""
        work = next((p for p in self.pending_mrs if p["rig"] == rig), None)
        if work is None:
            return
        self.pending_mrs.remove(work)
        rng, bead, name = self.rng, work["bead"], work["name"]
        mol, mr = self.bead_id(rig), self.bead_id(rig)
        sid, cwd, w, _ = self.session("refinery", rig, "", mr)
        self.write_session(sid, cwd, w)
        end = w.ts + timedelta(seconds=30)
        polecat = address_of("polecat", rig, name)
        self.record(mol, "mol-polecat-work", "closed", work["start"], end, issue_type="molecule", assignee=polecat,
                    close_reason="merged: close attached molecule", created_by="witness")
        work["deps"].append({"issue_id": bead, "depends_on_id": mol, "type": "blocks",
                             "created_at": bead_stamp(work["start"]), "created_by": "witness"})
        self.record(mr, f"Merge: {bead}", "closed", work["done"], end, issue_type="merge-request",
                    assignee=f"{rig}/refinery", close_reason="merged", created_by=polecat,
                    description=f"branch: polecat/{name}\ntarget: main\nsource_issue: {bead}\nworker: {name}")
        self.record(bead, f"{rig}: {rng.choice(MODULES)} work", "closed", work["start"], end,
                    priority=rng.randint(1, 3), assignee=polecat,
                    description=f"attached_molecule: {mol}\nattached_formula: mol-polecat-work",
                    close_reason=f"Merged in {mr}\ntarget_branch: main\ncommit_sha: {rng.getrandbits(160):040x}",
                    dependencies=work["deps"])

    def agent_bead(self, role: str, rig: str, name: str, title: str, reason: str | None, features=()) -> None:
        bead = self.bead_id(rig if role not in ("mayor", "deacon", "boot", "dog") else "hq")
        start = self.ts - timedelta(minutes=2)
        sid, cwd, w, _ = self.session(role, rig, name, bead, features=features)
        self.write_session(sid, cwd, w)
        self.record(bead, title, "closed", start, w.ts + timedelta(minutes=1), assignee=address_of(role, rig, name),
                    close_reason=reason, issue_type="task")

    def build(self) -> None:
        rng = self.rng
        self.pending_mrs: list[dict] = []
        special = ["commands", "rewind", "parallel", "ansi", "subagent", "interrupt", "image", "api_error",
                   "compact", "v20", "parallel", "ansi"]
        for i in range(14 * self.scale):
            for rig in RIGS:
                features = []
                if i < len(special):
                    features.append(special[i])
                    if special[i] == "v20":
                        features.append("subagent")
                elif rng.random() < 0.25:
                    features.append(rng.choice(["parallel", "ansi", "subagent", "commands"]))
                self.polecat_work(rig, tuple(features))
                self.refinery_run(rig)
                if i % 2 == 0:
                    self.agent_bead("witness", rig, "", "Digest: mol-witness-patrol",
                                    f"patrol cycle complete: {rng.randint(2, 5)} polecats checked")
                if i % 3 == 0:
                    crew = rng.choice(NAMES)
                    self.agent_bead("crew", rig, crew, f"Review {rng.choice(MODULES)}",
                                    rng.choice(["Completed with no code changes (already fixed or pushed "
                                                "directly to main)", None]))
            self.agent_bead("mayor", "", "", "Plan the week's convoys", rng.choice(["closed", None, "done"]))
            if i % 3 == 0:
                self.agent_bead("mayor", "", "", "Release blockers", None, features=("commands",))
            if i % 4 == 0:
                self.agent_bead("deacon", "", "", "Digest: mol-deacon-patrol", None)
                self.agent_bead("boot", "", "", "Boot check", None)
                self.agent_bead("dog", "", rng.choice(("alpha", "rex")), "Reaper run", None)
        for rig in RIGS:  # the refinery drains what is left
            while any(p["rig"] == rig for p in self.pending_mrs):
                self.refinery_run(rig)
        for _ in range(2 * self.scale):  # what the reaper closed
            self.record(self.bead_id("gastown"), "Flaky CI on arm64", "closed", self.ts - timedelta(days=20), self.ts,
                        priority=3, close_reason="stale:auto-closed by reaper")
        # a session in a rig clone (not an agent), open and hooked work, a tombstone
        sid, cwd, w, _ = self.session("clone", "gastown", "", "gt-clone")
        self.write_session(sid, cwd, w)
        for status in ("open", "hooked", "in_progress"):
            self.record(self.bead_id("gastown"), f"Pending {status} work", status, self.ts, None,
                        assignee="gastown/polecats/nux" if status != "open" else None)
        self.record(self.bead_id("beads"), "Old merge request", "tombstone", self.ts, None,
                    issue_type="merge-request", deleted_by="daemon", delete_reason="delete", original_type="merge-request")

    def write(self) -> None:
        beads_dir = self.out / "beads"
        beads_dir.mkdir(parents=True, exist_ok=True)
        with open(beads_dir / "issues.jsonl", "w", encoding="utf-8") as fh:
            for rec in sorted(self.beads, key=lambda r: r["id"]):
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", default=str(HERE), help="folder for projects/ and beads/")
    parser.add_argument("--scale", type=int, default=1, help="sessions multiplier (default 1)")
    ns = parser.parse_args()
    out = Path(ns.out)
    for folder in (out / "projects", out / "beads"):
        if folder.exists():
            for f in sorted(folder.rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
    town = Town(out, ns.scale)
    town.build()
    town.write()
    files = list((out / "projects").rglob("*.jsonl"))
    print(f"wrote {len(files)} transcript files under {out / 'projects'} and {len(town.beads)} beads")


if __name__ == "__main__":
    main()

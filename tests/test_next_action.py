"""Next-action evaluation without a model: which turns are asked, how outputs are read and
scored, the bootstrap's intervals and the significance of a gate (formula/runtime/nextaction.py,
formula/runtime/bootstrap.py, the eval step's gates)."""

import json
import math

import pytest

from formula.runtime import bootstrap
from formula.runtime import nextaction as na


def call(name, args, content=""):
    return {"role": "assistant", "content": content, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}


def session(sid, role="polecat", outcome="merged"):
    return {"id": sid, "meta": {"role": role, "outcome": outcome}, "messages": [
        {"role": "user", "content": "Fix the parser."},
        call("Read", {"file_path": "src/parser.py"}, "I'll read it."),
        {"role": "tool", "content": "def parse(): ...", "tool_call_id": "t1"},
        call("Edit", {"file_path": "src/parser.py", "old_string": "n - 1", "new_string": "n"}),
        {"role": "tool", "content": "updated", "tool_call_id": "t1"},
        {"role": "assistant", "content": "Fixed the loop bound."},
    ]}


# --- reading outputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,ended,kind,calls,rest", [
    ('<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n</tool_call>', True, "call",
     [("Bash", {"command": "ls"})], ""),
    ('Let me look.\n<tool_call>\n{"name": "Read", "arguments": {"file_path": "a.py"}}\n</tool_call>', True,
     "call", [("Read", {"file_path": "a.py"})], "Let me look."),
    # two calls in one turn (parallel tool use): both read, in order
    ('<tool_call>\n{"name": "A", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "B", "arguments": {}}\n'
     '</tool_call>', True, "call", [("A", {}), ("B", {})], ""),
    # arguments written as a JSON string (what the corpus stores) are read as JSON
    ('<tool_call>{"name": "Bash", "arguments": "{\\"command\\": \\"ls\\"}"}</tool_call>', True, "call",
     [("Bash", {"command": "ls"})], ""),
    # llama3's convention: the whole output one {"name", "parameters"} object
    ('{"name": "Read", "parameters": {"file_path": "a"}}', True, "call", [("Read", {"file_path": "a"})], ""),
    ("Merged gt-1; the queue is empty.", True, "reply", [], "Merged gt-1; the queue is empty."),
    ("Merged gt-1; the queue", False, "cut", [], "Merged gt-1; the queue"),
    ("<tool_call>\nnot json at all\n</tool_call>", True, "reply", [], ""),
])
def test_outputs_are_read_the_way_the_templates_write_calls(text, ended, kind, calls, rest):
    a = na.parse_output(text, ended)
    assert a.kind == kind
    assert [(n, v) for n, v in a.calls] == calls
    assert a.text == rest


def test_a_call_cut_off_keeps_its_name_and_its_arguments_as_text():
    a = na.parse_output('<tool_call>\n{"name": "Bash", "arguments": {"command": "gt do', ended=False)
    assert a.kind == "call" and a.calls[0][0] == "Bash"
    args = a.calls[0][1]
    assert not na.json_equal(args, {"command": "gt done"})
    assert 0.5 < na.json_similarity(args, {"command": "gt done"}) < 1


def test_render_writes_a_reference_the_way_the_template_does():
    text = na.render(na.reference_action(call("Bash", {"command": "ls"}, "Listing.")))
    assert text == 'Listing.\n<tool_call>{"name": "Bash", "arguments": {"command": "ls"}}</tool_call>'
    assert na.parse_output(text, True).calls == [("Bash", {"command": "ls"})]


# --- similarity --------------------------------------------------------------------------------

def test_chrf():
    assert na.chrf("Merged gt-1.", "Merged gt-1.") == 1.0
    assert na.chrf("Merged  gt-1.", "Merged gt-1.") == 1.0  # whitespace is not counted
    assert na.chrf("", "") == 1.0 and na.chrf("", "x") == 0.0 and na.chrf("x", "") == 0.0
    assert na.chrf("qqqq", "zzzz") == 0.0
    near, far = na.chrf("Merged gt-2.", "Merged gt-1."), na.chrf("Burned it.", "Merged gt-1.")
    assert 0 < far < near < 1
    # recall weighs more than precision (beta = 2): saying less is worse than saying more
    assert na.chrf("Merged gt-1. The queue is empty now.", "Merged gt-1.") > na.chrf("Merged", "Merged gt-1.")


@pytest.mark.parametrize("hyp,ref,expected", [
    ({"a": 1, "b": "x"}, {"a": 1, "b": "x"}, 1.0),
    ({"a": 1}, {"a": 1, "b": "x"}, 0.5),  # a missing key scores 0
    ({"a": 2}, {"a": 1}, 0.0),
    ({"a": True}, {"a": 1}, 0.0),  # a boolean is not a number
    ({}, {}, 1.0),
    ([1, 2], [1, 2, 3], 2 / 3),
    ({"x": {"y": [1]}}, {"x": {"y": [1]}}, 1.0),
    ("ls", 3, 0.0),
    (None, None, 1.0),
])
def test_json_similarity(hyp, ref, expected):
    assert na.json_similarity(hyp, ref) == pytest.approx(expected)


def test_string_arguments_score_by_chrf():
    s = na.json_similarity({"command": "gt done"}, {"command": "gt done --force"})
    assert s == pytest.approx(na.chrf("gt done", "gt done --force") / 1) and 0 < s < 1


# --- scoring -----------------------------------------------------------------------------------

def test_a_turn_is_scored_against_what_the_agent_did():
    ref = na.reference_action(call("Edit", {"file_path": "a.py", "new_string": "n"}))
    right = na.parse_output('<tool_call>{"name": "Edit", "arguments": {"file_path": "a.py", "new_string": "n"}}'
                            '</tool_call>', True)
    s = na.score(ref, right)
    assert s == {"tool_accuracy": 1.0, "args_exact": 1.0, "args_similarity": 1.0, "text_similarity": None,
                 "stop_accuracy": 1.0}
    close = na.parse_output('<tool_call>{"name": "Edit", "arguments": {"file_path": "b.py", "new_string": "n"}}'
                            '</tool_call>', True)
    s = na.score(ref, close)
    assert s["tool_accuracy"] == 1 and s["args_exact"] == 0 and 0.5 <= s["args_similarity"] < 1
    wrong = na.parse_output('<tool_call>{"name": "Read", "arguments": {"file_path": "a.py"}}</tool_call>', True)
    s = na.score(ref, wrong)
    assert s["tool_accuracy"] == 0 and s["args_similarity"] == 0 and s["stop_accuracy"] == 1
    talk = na.parse_output("Done.", True)
    assert na.score(ref, talk)["stop_accuracy"] == 0


def test_a_reply_is_scored_by_its_text_and_by_ending_the_turn():
    ref = na.reference_action({"role": "assistant", "content": "Fixed the loop bound."})
    s = na.score(ref, na.parse_output("Fixed the loop bound.", True))
    assert s["text_similarity"] == 1 and s["stop_accuracy"] == 1 and s["tool_accuracy"] is None
    assert na.score(ref, na.parse_output("Fixed the loop bound. And", False))["stop_accuracy"] == 0  # cut off
    calls = na.score(ref, na.parse_output('<tool_call>{"name": "Bash", "arguments": {}}</tool_call>', True))
    assert calls["stop_accuracy"] == 0 and calls["text_similarity"] == 0


def test_every_assistant_turn_is_asked_whole_sessions_at_a_time():
    data = [session(f"s{i}") for i in range(5)]
    turns = na.turns(data, max_turns=1000)
    assert len(turns) == 15
    first = [t for t in turns if t.session == turns[0].session]
    assert [t.index for t in first] == [1, 3, 5]  # in order, consecutive
    assert [m["role"] for m in first[2].prompt] == ["user", "assistant", "tool", "assistant", "tool"]
    assert first[2].reference["content"] == "Fixed the loop bound."
    capped = na.turns(data, max_turns=7)
    assert len(capped) == 6 and len({t.session for t in capped}) == 2  # whole sessions only
    assert [t.session for t in capped] == [t.session for t in turns[:6]]  # the same order
    assert len(na.turns(data, max_turns=1)) == 3  # the first session is always taken


def test_budget_is_twice_the_reference_and_a_little_more():
    assert na.budget(10, 256) == 36
    assert na.budget(500, 256) == 256


def test_tally_adds_turns_up_per_session():
    data = [session("a"), session("b")]
    turns = na.turns(data, 100)
    scored = [(t, {**dict.fromkeys(na.FIGURES), "stop_accuracy": float(t.session == "a")}) for t in turns]
    t = na.tally(scored)
    assert sorted(t["units"]) == ["a", "b"]
    sums, counts = t["stats"]["stop_accuracy"]
    assert sorted(zip(t["units"], sums, counts)) == [("a", 3.0, 3.0), ("b", 0.0, 3.0)]
    assert na.value(sums, counts) == 0.5
    assert math.isnan(na.value(*t["stats"]["tool_accuracy"]))


# --- the bootstrap -----------------------------------------------------------------------------

def test_resamples_are_seeded_and_draw_as_many_units_as_there_are():
    w = bootstrap.weights(7, resamples=250, seed=3)  # three chunks
    assert w.shape == (250, 7) and (w.sum(axis=1) == 7).all()
    assert (w == bootstrap.weights(7, resamples=250, seed=3)).all()
    assert not (w == bootstrap.weights(7, resamples=250, seed=4)).all()
    sums, counts = [1.0, 0, 2, 0, 1, 3, 0], [1.0, 1, 2, 1, 1, 3, 1]
    reps = bootstrap.replicates(7, sums, counts, resamples=250, seed=3)
    assert reps == pytest.approx((w @ sums) / (w @ counts))


def test_a_resampler_pairs_measurements_by_unit():
    r = bootstrap.Resampler([["a", "b", "c"], ["c", "b", "a"]], resamples=300)
    one = r.figure(["a", "b", "c"], [1.0, 0.0, 1.0], [1, 1, 1], "ratio")
    same = r.figure(["c", "b", "a"], [1.0, 0.0, 1.0], [1, 1, 1], "ratio")  # listed in another order
    assert (one == same).all() and len(one) == 300


def test_an_interval_holds_the_value_and_narrows_with_more_sessions():
    small = bootstrap.figure_interval([str(i) for i in range(10)], [i % 2 for i in range(10)], [1] * 10)
    big = bootstrap.figure_interval([str(i) for i in range(1000)], [i % 2 for i in range(1000)], [1] * 1000)
    assert small[0] < 0.5 < small[1] and big[0] < 0.5 < big[1]
    assert big[1] - big[0] < (small[1] - small[0]) / 3
    assert bootstrap.figure_interval(["a"], [0], [0]) is None  # nothing counts: no interval
    assert bootstrap.figure_interval(["a", "b"], [1.0, 3.0], [1, 1], "exp")[1] <= math.exp(3) + 1e-9


def _evaluator(results):
    from formula.runtime.steps.eval import Evaluator, with_intervals

    ev = Evaluator({})
    for label, (units, sums, counts) in results.items():
        ev.results[label] = with_intervals({"metric": "next_action", "model": label,
                                            "tool_accuracy": sum(sums) / sum(counts)},
                                           units, {"tool_accuracy": (sums, counts)})
    return ev


def leaf(label):
    return {"metric": "next_action", "model": label, "label": label, "attr": "tool_accuracy"}


def gate(op=">", confidence=0.95, test=None):
    return {"left": leaf("trained"), "op": op, "right": leaf("base"), "text": "t",
            **({"significant": {"confidence": confidence, **({"test": test} if test else {})}}
               if confidence else {})}


def test_a_real_improvement_is_significant():
    units = [f"s{i}" for i in range(30)]
    ev = _evaluator({"trained": (units, [3.0] * 25 + [1.0] * 5, [4.0] * 30),
                     "base": (units, [1.0] * 25 + [1.0] * 5, [4.0] * 30)})
    g = ev.gate(gate())
    assert g["passed"] and g["significance"]["held"], g
    assert g["significance"]["share"] == 1.0 and g["significance"]["bound"] > 0
    assert g["left_interval"][0] < g["left"] < g["left_interval"][1]
    assert "significant: holds in 100.0% of 2000 paired resamples" in g["detail"]


def test_a_difference_within_the_noise_is_not():
    units = [f"s{i}" for i in range(8)]
    # the trained model is ahead on one session only: ahead on average, not beyond the noise
    ev = _evaluator({"trained": (units, [4.0] + [1.0] * 7, [4.0] * 8),
                     "base": (units, [1.0] * 8, [4.0] * 8)})
    g = ev.gate(gate())
    assert g["left"] > g["right"]
    assert not g["passed"] and not g["significance"]["held"]
    assert "; not significant: " in g["detail"]
    plain = ev.gate(gate(confidence=None))  # the same comparison without significant(...) passes
    assert plain["passed"] and "significance" not in plain


def test_pairing_cancels_what_the_sessions_share():
    """Sessions differ a lot in difficulty, the trained model is a little better on every one:
    resampled together the difference is clear; resampled independently it would not be."""
    units = [f"s{i}" for i in range(12)]
    hard = [0.0, 4.0] * 6
    ev = _evaluator({"trained": (units, [h + 1 for h in hard], [5.0] * 12),
                     "base": (units, hard, [5.0] * 12)})
    g = ev.gate(gate())
    assert g["significance"]["held"]
    assert g["left_interval"][0] < g["right_interval"][1]  # the two intervals overlap


def test_significance_is_one_sided_in_the_direction_of_the_check():
    units = [f"s{i}" for i in range(30)]
    ev = _evaluator({"trained": (units, [1.0] * 30, [4.0] * 30), "base": (units, [3.0] * 30, [4.0] * 30)})
    assert ev.gate(gate("<"))["passed"]
    assert not ev.gate(gate(">"))["passed"]


def test_not_worse_passes_equal_models_and_a_drop_within_the_noise():
    units = [f"s{i}" for i in range(8)]
    same = (units, [2.0, 1.0, 3.0, 0.0, 2.0, 4.0, 1.0, 2.0], [4.0] * 8)
    ev = _evaluator({"trained": same, "base": same})
    assert not ev.gate(gate(">="))["passed"]  # significant(>=) asks for an improvement
    g = ev.gate(gate(">=", test="not_worse"))
    assert g["passed"] and g["significance"]["held"] and "; not worse beyond the noise" in g["detail"], g
    # behind on one session of eight: below the line as measured, not beyond the noise
    ev = _evaluator({"trained": (units, [1.0] + same[1][1:], same[2]), "base": same})
    g = ev.gate(gate(">=", test="not_worse"))
    assert g["left"] < g["right"] and g["passed"], g
    assert not ev.gate(gate(">=", confidence=None))["passed"]  # the plain check fails on it


def test_not_worse_fails_a_clear_regression_in_the_direction_of_the_check():
    units = [f"s{i}" for i in range(30)]
    worse, better = (units, [1.0] * 30, [4.0] * 30), (units, [3.0] * 30, [4.0] * 30)
    ev = _evaluator({"trained": worse, "base": better})
    g = ev.gate(gate(">=", test="not_worse"))
    assert not g["passed"] and not g["significance"]["held"] and g["significance"]["bound"] < 0
    assert "; worse beyond the noise: holds in 0.0% of 2000 paired resamples" in g["detail"], g["detail"]
    assert ev.gate(gate("<=", test="not_worse"))["passed"]  # lower is better for `<=` (perplexity)


# --- the language ------------------------------------------------------------------------------

def test_a_significance_check_lowers_to_a_gate_over_the_corpus_sessions(tmp_path):
    from conftest import ROOT

    from formula.compiler.lower import lower
    from formula.compiler.pipeline import compile_formula

    text = (ROOT / "examples" / "tiny.formula").read_text().replace(
        "eval gate {\n  on = gguf.q8_0\n",
        "eval gate {\n  on = gguf.q8_0\n  check significant(next_action(sessions.holdout where outcome == \"merged\")"
        ".tool_accuracy > next_action(tiny, sessions.holdout where outcome == \"merged\").tool_accuracy, "
        "confidence = 90%)\n")
    (tmp_path / "tiny.formula").write_text(text)
    for name in ("data", "evals"):
        (tmp_path / name).symlink_to(ROOT / "examples" / name)
    result = compile_formula(str(tmp_path / "tiny.formula"), [])
    assert result.ok, result.diagnostics
    step = lower(result.plan).steps["eval.gate"]
    g = step.config["gates"][0]
    assert g["significant"] == {"confidence": 0.9}  # the key a significance check always had
    assert g["left"]["metric"] == "next_action" and g["left"]["attr"] == "tool_accuracy"
    assert g["left"]["data"] == g["right"]["data"]  # one input: the sessions do not depend on the model
    assert step.deps[g["left"]["data"]] == "corpus.sessions"
    assert g["left"]["where"] == {"field": "outcome", "op": "==", "value": "merged"}
    assert g["left"]["args"] == {"max_new_tokens": 256, "max_turns": 1000}
    plain = [g for g in step.config["gates"] if g["left"]["metric"] == "perplexity"]
    assert plain and all("significant" not in g for g in plain)


# --- the engines, on the built example ---------------------------------------------------------

def test_the_batched_engine_answers_as_a_plain_llama_cpp_loop(built_example):
    """Sessions decoded together, each keeping its cache from turn to turn, give the greedy
    answers a fresh llama-cpp-python call gives (but where two tokens tie exactly, which either
    may break the other way)."""
    import llama_cpp
    from conftest import artifact

    from formula.runtime.export.llama import ChatRenderer, next_actions, open_gguf

    project, store = built_example
    corpus = artifact(project, store, "corpus.sessions")
    data = [json.loads(l) for l in (corpus / "train.jsonl").read_text().splitlines()]
    turns = na.turns(data, 80)
    with open_gguf(artifact(project, store, "gguf.gguf.q8_0") / "model.gguf", n_ctx=0) as llm:
        outs, stats = next_actions(llm, turns, 64, slots=4)
        assert stats["slots"] == 4 and stats["reused_tokens"] > stats["prompt_tokens"] / 3
        render, vocab = ChatRenderer(llm), llama_cpp.llama_model_get_vocab(llm._model.model)
        same = 0
        for t, (text, ended) in zip(turns, outs):
            ids = render.ids(t.prompt)
            limit = na.budget(len(render.ids(t.prompt + [t.reference], False)) - len(ids), 64)
            llm.reset()
            gen, stop = [], False
            for tok in llm.generate(ids, temp=0.0, reset=True):
                if llama_cpp.llama_vocab_is_eog(vocab, tok):
                    stop = True
                    break
                gen.append(tok)
                if len(gen) >= limit:
                    break
            same += (llm.detokenize(gen).decode("utf-8", "replace"), stop) == (text, ended)
    assert same >= 0.95 * len(turns), f"{same} of {len(turns)}"


def test_transformers_answers_as_the_gguf_does(built_example):
    from conftest import artifact

    from formula.runtime.export.llama import next_actions, open_gguf
    from formula.runtime.steps.eval import HFModel

    project, store = built_example
    corpus = artifact(project, store, "corpus.sessions")
    turns = na.turns([json.loads(l) for l in (corpus / "holdout.jsonl").read_text().splitlines()], 1000)
    hf, _ = HFModel(artifact(project, store, "assemble.tiny_chat")).next_actions(turns, 64, batch_size=4)
    with open_gguf(artifact(project, store, "gguf.gguf.f16") / "model.gguf", n_ctx=0) as llm:
        gguf, _ = next_actions(llm, turns, 64)
    same = sum(a == b for a, b in zip(hf, gguf))
    assert same >= 0.9 * len(turns), f"{same} of {len(turns)}"


def test_a_not_worse_check_lowers_with_its_test(tmp_path):
    from conftest import ROOT

    from formula.compiler.lower import lower
    from formula.compiler.pipeline import compile_formula

    text = (ROOT / "examples" / "tiny.formula").read_text().replace(
        "eval gate {\n  on = gguf.q8_0\n",
        "eval gate {\n  on = gguf.q8_0\n  check not_worse(perplexity(sessions.holdout) <= perplexity(tiny, sessions.holdout))\n")
    (tmp_path / "tiny.formula").write_text(text)
    for name in ("data", "evals"):
        (tmp_path / name).symlink_to(ROOT / "examples" / name)
    result = compile_formula(str(tmp_path / "tiny.formula"), [])
    assert result.ok, result.diagnostics
    g = lower(result.plan).steps["eval.gate"].config["gates"][0]
    assert g["significant"] == {"confidence": 0.95, "test": "not_worse"} and g["op"] == "<="

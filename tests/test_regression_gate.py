"""Gates against an earlier build (`tagged("v1")`, issue 18 item 3) and lm-evaluation-harness
tasks (`lm_eval(TASK).FIGURE`, item 4): checked, lowered, keyed and built on a micro formula
(a 64-wide one-layer llama trained for one epoch on the example's sessions)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, run_formula
from formula.compiler.diagnostics import render_text
from formula.compiler.lower import lower
from formula.compiler.pipeline import compile_formula

MICRO = '''formula micro {
  description = "one stage and an eval, small enough to build in a minute"
}

var lr: float = 2e-3 "peak learning rate"

model tiny {
  from      = init(llama, hidden = 64, layers = 1, heads = 2, kv_heads = 1, ffn = 128, context = 512, seed = 1)
  tokenizer = train_bpe(sessions, vocab = 512)
  template  = chatml
}

corpus sessions {
  source      = gastown("data/projects", beads = "data/beads/issues.jsonl", town = "/home/op/gt")
  where       = turns >= 1 and role != "dog"
  holdout     = 10%
  max_len     = 256 tokens
  max_dropped = 90%
}

stage lm {
  method  = sft
  model   = tiny
  data    = sessions
  adapter = full
  epochs  = 1
  lr      = lr
  batch   = 8
  seed    = 17
}
'''

REGRESSION = MICRO + '''
eval gate {
  on = lm
  check perplexity(sessions.holdout) <= 1.01 * perplexity(tagged("v1"), sessions.holdout)
  check not_worse(perplexity(sessions.holdout) <= perplexity(tagged("v1"), sessions.holdout))
}
'''

TASK = '"lmeval/gastown_commands.yaml"'
GENERAL = MICRO + f'''
eval general {{
  on = lm
  check lm_eval({TASK}).acc >= lm_eval(tiny, {TASK}).acc - 0.5
  check significant(lm_eval({TASK}).acc_norm > lm_eval(tiny, {TASK}).acc_norm + 1)
}}
'''


def project(tmp: Path, text: str, name: str = "micro.formula") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    if not (tmp / "data").exists():
        (tmp / "data").symlink_to(ROOT / "examples" / "data")
        shutil.copytree(ROOT / "tests" / "fixtures" / "lmeval", tmp / "lmeval")
    (tmp / name).write_text(text)
    return tmp / name


def compiled(path: Path):
    result = compile_formula(str(path), [])
    return result, render_text(result.diagnostics)


# --- the language --------------------------------------------------------------------------------

def test_a_tagged_target_is_an_input_from_the_tagged_build_not_a_step_of_this_one(tmp_path):
    text = REGRESSION.replace('perplexity(tagged("v1"), sessions.holdout)',
                              'perplexity(tagged("v1"), sessions.holdout) + 0 * perplexity(tagged("v1", tiny), '
                              'sessions.holdout)')
    result, shown = compiled(project(tmp_path, text))
    assert result.ok, shown
    step = lower(result.plan).steps["eval.gate"]
    g = step.config["gates"][0]
    tagged = g["right"]["left"]["right"]
    assert tagged["label"] == 'perplexity(tagged("v1", lm), sessions.holdout) of tagged("v1", lm)'
    assert tagged["model"] not in step.deps
    assert (step.tagged[tagged["model"]].tag, step.tagged[tagged["model"]].step) == ("v1", "train.lm")
    other = g["right"]["right"]["right"]
    assert (step.tagged[other["model"]].tag, step.tagged[other["model"]].step) == ("v1", "model.tiny")
    # the tagged model's data is this build's (the same tokenizer, the same held-out sessions)
    assert step.deps[tagged["data"]] == step.deps[g["left"]["data"]] == "tokenize.sessions.tiny"


def test_the_compile_cache_keeps_tagged_inputs(tmp_path):
    from formula.cli import compile_cache

    result, shown = compiled(project(tmp_path, REGRESSION))
    graph = lower(result.plan)
    compile_cache.save(tmp_path / "store", str(tmp_path / "micro.formula"), [], [], "micro", graph, "")
    _, again, _ = compile_cache.load(tmp_path / "store", str(tmp_path / "micro.formula"), [])
    assert again.steps["eval.gate"].tagged == graph.steps["eval.gate"].tagged != {}


def test_a_missing_tag_fails_the_step_that_reads_it_and_says_how_to_tag(tmp_path):
    from formula.runtime.build import Builder, TagError
    from formula.runtime.store import Store

    result, _ = compiled(project(tmp_path, REGRESSION))
    graph = lower(result.plan)
    store = Store(tmp_path / "store")
    builder = Builder(graph, store, str(tmp_path / "micro.formula"))
    spec = graph.steps["eval.gate"]
    with pytest.raises(TagError, match=r"no build is tagged `v1` in .*`formula tag v1 FORMULA`"):
        builder.key(spec, {d: "0" * 64 for d in spec.deps.values()}, store.hasher())
    store.tag("v1", {"formula": "elsewhere.formula", "steps": {"model.tiny": "f" * 64}})
    with pytest.raises(TagError, match=r"tagged `v1` \(elsewhere.formula\) has no stored output of "
                                       r"train.lm: it has no such step"):
        builder.key(spec, {d: "0" * 64 for d in spec.deps.values()}, store.hasher())


def test_lm_eval_wants_a_figure_a_model_folder_and_the_extra(tmp_path, monkeypatch):
    text = MICRO + f'''
export gguf {{
  from   = lm_chat
  quants = [f16]
}}

assemble lm_chat {{
  from = lm
}}

eval general {{
  on = gguf
  check lm_eval({TASK}) >= 0.5
  check lm_eval({TASK}).acc >= 0.5
  check lm_eval(gguf.f16, "hellaswag").acc_norm >= 0.5
  check lm_eval(lm_chat, "lmeval/missing.yaml").acc >= 0.5
}}
'''
    result, shown = compiled(project(tmp_path, text))
    assert "`lm_eval(...)` gives the figures its task reports; pick one" in shown
    assert "lm_eval measures a model folder, and this eval is on `gguf.f16`, an exported file" in shown
    assert "lm_eval measures a model folder, not an exported file" in shown
    assert "the task file `lmeval/missing.yaml` does not exist" in shown
    assert "hellaswag" not in shown.split("does not exist")[0].rsplit("error", 1)[-1]  # a registry name

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    result, shown = compiled(project(tmp_path, GENERAL))
    assert "error[missing-extra]: `lm_eval` needs lm-evaluation-harness, which is not installed" in shown
    assert "pip install 'formula[lmeval]'" in shown


def test_lm_eval_lowers_to_the_task_files_folder(tmp_path):
    result, shown = compiled(project(tmp_path, GENERAL))
    assert result.ok, shown
    step = lower(result.plan).steps["eval.general"]
    left = step.config["gates"][0]["left"]
    assert left["label"] == 'lm_eval("lmeval/gastown_commands.yaml", batch_size = 8, limit = 1000, ' \
                            'num_fewshot = 0) of lm'
    assert left["task_file"] == "gastown_commands.yaml"
    assert step.files[left["task_dir"]].pattern == str(tmp_path / "lmeval")
    assert not step.files[left["task_dir"]].is_glob


# --- built -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("micro")
    path = project(tmp / "p", REGRESSION)
    return path.parent, tmp / "store"


def failed_checks(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("check failed")]


def test_a_retrain_that_got_worse_than_the_tagged_build_fails(micro):
    p, store = micro
    first = run_formula(p, store, "build", "micro.formula", "--plain", check=False)
    assert first.returncode == 1
    assert "no build is tagged `v1`" in first.stderr and "formula tag v1" in first.stderr
    run_formula(p, store, "tag", "v1", "micro.formula")
    ok = run_formula(p, store, "build", "micro.formula", "--plain")
    assert "build ok" in ok.stderr
    report = json.loads((Path(store) / "reports" / "micro" / "build.json").read_text())
    assert report["ok"]

    worse = run_formula(p, store, "build", "micro.formula", "--plain", "var.lr=1e-9", check=False)
    assert worse.returncode == 1, worse.stderr[-2000:]
    line, paired = failed_checks(worse)
    # both figures with their intervals: the retrain's perplexity and 1.01 x the tagged build's
    assert 'perplexity(tagged("v1"), sessions.holdout)' in line and "is not <=" in line
    assert line.count("[") == 2, line
    # and beyond the noise of the held-out sessions, paired (the equal model passed it above)
    assert paired.startswith("check failed") and "not_worse(" in paired
    assert "; worse beyond the noise: holds in 0.0% of 2000 paired resamples of the sessions" in paired, paired
    text = (Path(store) / "reports" / "micro" / "report.md").read_text()
    assert '`perplexity(tagged("v1", lm), sessions.holdout) of tagged("v1", lm)`' in text
    assert "**FAILED**" in text

    again = run_formula(p, store, "build", "micro.formula", "--plain")  # the tagged setting passes
    assert "build ok" in again.stderr

    # Tagging the worse build changes what the gate compares with: it runs again, and passes.
    run_formula(p, store, "build", "micro.formula", "--plain", "var.lr=1e-9", check=False)
    run_formula(p, store, "tag", "v1", "micro.formula")
    retagged = run_formula(p, store, "build", "micro.formula", "--plain")
    assert re.search(r"^ +built +eval\.gate ", retagged.stderr, re.M) and "build ok" in retagged.stderr


def test_lm_eval_on_a_local_task_in_the_report_and_the_gates(micro):
    pytest.importorskip("lm_eval")
    p, store = micro
    project(p, GENERAL, "general.formula")
    r = run_formula(p, store, "build", "general.formula", "--plain", check=False)
    assert r.returncode == 1, r.stderr[-3000:]
    [line] = failed_checks(r)  # the first gate passes; the second cannot (acc_norm > 1 + base)
    assert "significant(lm_eval(" in line and "paired resamples of the documents" in line
    out = Path(run_formula(p, store, "show", "micro:eval.general").stdout.split("output")[1].split()[0])
    measured = json.loads((out / "eval.json").read_text())["metrics"]
    trained = measured['lm_eval("lmeval/gastown_commands.yaml", batch_size = 8, limit = 1000, num_fewshot = 0) of lm']
    base = measured['lm_eval(tiny, "lmeval/gastown_commands.yaml", batch_size = 8, limit = 1000, '
                    'num_fewshot = 0) of tiny']
    for m in (trained, base):
        assert m["task"] == "gastown_commands" and m["documents"] == 8 and m["figures"] == ["acc", "acc_norm"]
        for f in ("acc", "acc_norm"):
            assert m[f] in [k / 8 for k in range(9)]  # a share of the 8 documents
            if m["ci"][f] is not None:
                assert m["ci"][f][0] <= m[f] <= m["ci"][f][1]
    gate = json.loads((out / "eval.json").read_text())["gates"][0]
    assert gate["left"] == trained["acc"] and gate["right"] == pytest.approx(base["acc"] - 0.5)
    text = (out / "report.md").read_text()
    assert "## lm-evaluation-harness: gastown_commands" in text and "8 documents, 0-shot" in text
    assert "| acc | " in text and "`lm` | `tiny`" in text
    flat = json.loads((out / "metrics.json").read_text())
    assert any(k.endswith(" of lm.acc_norm") for k in flat)

"""KTO (formula/methods/kto.py): a stage on a pairs block's labeled sessions, checked, lowered and
trained; a pairs block only KTO trains on may hold no pair."""

import json

import pytest

from test_methods import check, lowered, train

KTO = """stage kto {
  method             = kto
  model              = tiny
  data               = outcomes
  adapter            = lora(r = 4, alpha = 8)
  undesirable_weight = 3.0
  max_steps          = 2
  batch              = 4
  log_every          = 1
}
"""


def test_kto_trains_on_labeled_sessions_of_a_pairs_block(tmp_path):
    graph = lowered(tmp_path, KTO)
    spec = graph.steps["train.kto"]
    assert spec.deps["data"] == "pairs.outcomes"
    assert spec.config["beta"] == 0.1 and spec.config["undesirable_weight"] == 3.0
    assert "packing" not in spec.config and "loss" not in spec.config
    # dpo still trains on the same block, so it must still make pairs
    assert "require" not in graph.steps["pairs.outcomes"].config


def test_a_pairs_block_only_kto_trains_on_needs_no_pair(tmp_path):
    only_kto = KTO.replace("data               = outcomes", "data               = labels") + (
        'pairs labels {\n  from     = sessions\n  chosen   = outcome == "merged"\n'
        '  rejected = outcome == "burned"\n}\n')
    graph = lowered(tmp_path, only_kto)
    assert graph.steps["pairs.labels"].config["require"] == "labeled"


def test_kto_on_a_corpus_or_with_a_dpo_field_is_refused(tmp_path):
    result = check(tmp_path, KTO.replace("data               = outcomes", "data = sessions"))
    assert [d.code for d in result.diagnostics if d.is_error] == ["kto-needs-pairs"]
    assert "trains on sessions labeled desirable and undesirable" in result.diagnostics[0].message
    result = check(tmp_path, KTO.replace("  max_steps", "  loss = ipo\n  max_steps"))
    assert [d.code for d in result.diagnostics if d.is_error] == ["wrong-method"]


def test_kto_stage_trains(tmp_path):
    pytest.importorskip("trl")
    out = train(tmp_path, KTO, "kto")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["examples"] > 0
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["method"] == "kto" and lineage["adapter"]["type"] == "lora_plan"
    assert (out / "adapter").is_dir() and (out / "model.safetensors").is_file()

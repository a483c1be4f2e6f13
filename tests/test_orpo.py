"""ORPO (formula/methods/orpo.py): a stage on a pairs block's preference pairs, with no reference
model, checked, lowered and trained."""

import json

import pytest

from test_methods import check, lowered, train

ORPO = """stage orpo {
  method    = orpo
  model     = tiny
  data      = outcomes
  adapter   = lora(r = 4, alpha = 8)
  beta      = 0.2
  max_steps = 2
  batch     = 4
  log_every = 1
}
"""


def test_orpo_trains_on_preference_pairs(tmp_path):
    graph = lowered(tmp_path, ORPO)
    spec = graph.steps["train.orpo"]
    assert spec.deps["data"] == "pairs.outcomes" and spec.deps["model"] == "model.tiny"
    assert spec.config["beta"] == 0.2 and "loss" not in spec.config and "desirable_weight" not in spec.config
    assert "require" not in graph.steps["pairs.outcomes"].config  # pairs, not only labels


def test_orpo_on_a_corpus_or_with_an_sft_field_is_refused(tmp_path):
    result = check(tmp_path, ORPO.replace("data      = outcomes", "data      = sessions"))
    assert [d.code for d in result.diagnostics if d.is_error] == ["orpo-needs-pairs"]
    assert result.diagnostics[0].message.startswith("an orpo stage trains on preference pairs")
    result = check(tmp_path, ORPO.replace("  max_steps", "  packing = true\n  max_steps"))
    assert [d.code for d in result.diagnostics if d.is_error] == ["wrong-method"]


def test_orpo_stage_trains(tmp_path):
    pytest.importorskip("trl")
    out = train(tmp_path, ORPO, "orpo")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["examples"] > 0
    assert json.loads((out / "lineage.json").read_text())["method"] == "orpo"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and "rewards_margins" in rows[-1]

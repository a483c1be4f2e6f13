"""What the real formulas compile to: extends, imports, overrides and defaults end up right."""

from formula.compiler import plan as P
from formula.compiler.pipeline import compile_formula

from conftest import ROOT


def compiled(name, *overrides):
    result = compile_formula(str(ROOT / name), overrides)
    assert result.ok, [d.message for d in result.diagnostics]
    return result.plan


def test_role_formula_is_its_parent_plus_a_few_lines():
    plan = compiled("formulas/polecat.formula")
    assert plan.name == "polecat"
    assert plan.models["base"].source == P.HubSource("Qwen/Qwen2.5-Coder-7B-Instruct", "main")
    sft = plan.stages["sft"]
    assert sft.adapter.r == 32 and sft.adapter.alpha == 64.0
    assert sft.data == P.DataView("corpus", "gt.sessions", "train", P.Cmp("outcome", "==", "merged"))
    assert plan.stages["dpo"].model == "sft" and plan.stages["dpo"].settings.lr == 2e-5
    assert set(plan.evals) == {"gate", "tools"}


def test_imported_library_is_bound_by_use_arguments():
    plan = compiled("formulas/mayor.formula")
    sessions = plan.corpora["gt.sessions"]
    assert sessions.where == P.AllOf((P.Cmp("role", "==", "mayor"), P.Cmp("turns", ">=", 2)))
    assert sessions.holdout == 0.05 and sessions.max_len == 4096
    assert plan.pairs["gt.outcomes"].data.name == "gt.sessions"
    assert plan.stages["sft"].settings.epochs == 3


def test_file_overrides_reach_exports_and_evals():
    plan = compiled("formulas/refinery.formula")
    assert plan.exports["gguf"].quants == ("f16", "q8_0", "q5_k_m")
    assert plan.evals["gate"].on == P.TargetRef("export", "gguf", "q5_k_m")


def test_command_line_overrides_win():
    plan = compiled("formulas/witness.formula", "stage.sft.lr=5e-5", "var.rank=16",
                    "stage.dpo.adapter.r=4")
    assert plan.stages["sft"].settings.lr == 5e-5
    assert plan.stages["sft"].adapter.r == 16
    assert plan.stages["dpo"].adapter.r == 4


def test_example_plan():
    plan = compiled("examples/tiny.formula")
    tiny = plan.models["tiny"]
    assert tiny.source == P.InitSource(arch="llama", hidden=256, layers=2, heads=4, kv_heads=2, ffn=512,
                                       context=1024, seed=1)
    assert tiny.tokenizer == P.TrainedTokenizer("sessions", 1024)
    assert tiny.template == P.NamedTemplate("chatml")
    assert plan.stages["lm"].adapter is None
    gate = plan.evals["gate"]
    assert gate.on == P.TargetRef("export", "gguf", "q8_0")
    first = gate.gates[0]
    assert first.op == "<=" and isinstance(first.right, P.Arith)
    assert first.right.right.target == P.TargetRef("model", "tiny")
    assert first.left.data == P.DataView("corpus", "sessions", "holdout")


def test_conditions_lower_to_what_the_runtime_evaluates():
    from formula.contract.conditions import from_json, matches, to_json

    pred = from_json(to_json(P.AllOf((P.Cmp("role", "in", ("mayor", "crew")), P.Negate(P.Cmp("turns", "<", 2))))))
    assert matches(pred, {"role": "crew", "turns": 3})
    assert not matches(pred, {"role": "crew", "turns": 1})
    assert not matches(pred, {"turns": 5})  # a missing field never matches


def test_a_stage_that_packs_gets_its_own_packed_tokenization(tmp_path):
    from formula.compiler.lower import lower

    plan = compiled("examples/tiny.formula", "stage.lm.packing=true")
    graph = lower(plan)
    assert graph.steps["train.lm"].deps["data"] == "tokenize.sessions.tiny.packed"
    assert graph.steps["tokenize.sessions.tiny.packed"].config["pack_to"] == 512
    assert graph.steps["train.sft"].deps["data"] == "tokenize.sessions.tiny"

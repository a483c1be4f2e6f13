"""The contract between the compiler and the steps (formula/contract/): every formula field has a
home in a step configuration and every configuration field comes from the formula; what the
lowering writes reads back into the same record; the lowered configurations of the repository's
formulas are golden (a change to one is a change to step keys, so it must be deliberate)."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from formula.compiler.lower import lower
from formula.compiler.pipeline import compile_formula
from formula.compiler.schema import SCHEMAS
from formula.contract import steps
from formula.contract.config import decode, encode, settings_of
from formula.formats import FORMATS
from formula.methods import METHODS

from conftest import GOLDEN, ROOT, UPDATE_GOLDEN

# Blocks that configure no step: the header is the plan's name and description.
NO_STEP = {"formula": "the plan's name and description (the build report shows them)"}


def names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("config", steps.BLOCK_CONFIGS, ids=lambda c: c.__name__)
def test_every_formula_field_has_a_home_in_a_step_configuration_and_back(config):
    schema = SCHEMAS[config.BLOCK]
    formula_fields = set(schema.field_names)
    config_fields = names(config)
    if config is steps.TrainConfig:  # a method's own fields sit beside the shared ones
        config_fields = (config_fields - {"options"}) | {n for m in METHODS.values() for n in names(m.Options)}
    homeless = formula_fields - set(config.ELSEWHERE) - config_fields
    assert not homeless, f"formula fields of `{config.BLOCK}` with no home in {config.__name__}: {homeless}"
    orphans = config_fields - set(config.DERIVED) - (formula_fields - set(config.ELSEWHERE))
    assert not orphans, f"fields of {config.__name__} that no `{config.BLOCK}` field sets: {orphans}"
    assert set(config.ELSEWHERE) <= formula_fields, "ELSEWHERE names a field the formula does not have"
    assert set(config.DERIVED) <= names(config), "DERIVED names a field the configuration does not have"


def test_every_block_kind_configures_a_step_or_says_why_not():
    assert set(SCHEMAS) == {c.BLOCK for c in steps.BLOCK_CONFIGS} | set(NO_STEP)


def test_a_setting_has_one_default_and_the_schema_shows_it():
    for config in steps.BLOCK_CONFIGS + (steps.StageSettings,):
        schema = SCHEMAS[getattr(config, "BLOCK", "stage")]
        for f, s in settings_of(config):
            spec = schema.field(f.name)
            assert spec is not None and spec.default == f.default and spec.type == s.type, (config, f.name)
    for method in METHODS.values():
        for f, s in method.settings():
            spec = SCHEMAS["stage"].field(f.name)
            assert spec.type == s.type and method.name in spec.methods, (method.name, f.name)


def test_tags_are_explicit_and_unique():
    tagged = [c for c in vars(steps).values()
              if isinstance(c, type) and dataclasses.is_dataclass(c) and "TAG" in vars(c)]
    tags = [c.TAG for c in tagged]
    assert len(tags) == len(set(tags)) and len(tags) >= 11
    # Nothing derives a tag from a class name any more: renaming a class keeps the tag.
    assert steps.Lora.TAG == "lora_plan" and steps.Full.TAG == "full"


def config_class(kind: str) -> type:
    if kind in FORMATS:
        return steps.ExportConfig
    return {"corpus": steps.CorpusConfig, "tokenizer": steps.TokenizerConfig, "model": steps.ModelConfig,
            "tokenize": steps.TokenizeConfig, "pairs": steps.PairsConfig, "train": steps.TrainConfig,
            "assemble": steps.AssembleConfig, "eval": steps.EvalConfig}[kind]


CASES = {"tiny": ("examples/tiny.formula",), "tiny_packed": ("examples/tiny.formula", "stage.lm.packing=true"),
         "mayor": ("formulas/mayor.formula",), "polecat": ("formulas/polecat.formula",),
         "refinery": ("formulas/refinery.formula",), "witness": ("formulas/witness.formula",)}


def lowered(path: str, *overrides: str):
    result = compile_formula(str(ROOT / path), list(overrides))
    assert result.ok, result.diagnostics
    return lower(result.plan)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_configuration_reads_back_into_its_record(case):
    for spec in lowered(*CASES[case]).steps.values():
        cls = config_class(spec.kind)
        extra = {"options": METHODS[spec.config["method"]].Options} if cls is steps.TrainConfig else {}
        record = decode(cls, spec.config, **extra)
        assert encode(record) == spec.config, spec.name


def _canonical(value):
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # the key's canonical form: 2 and 2.0 are one key
    return value


@pytest.mark.parametrize("case", sorted(CASES))
def test_lowered_configurations_are_golden(case):
    graph = lowered(*CASES[case])
    got = {name: {"kind": s.kind, "config": _canonical(s.config), "deps": s.deps,
                  "files": {k: [f.pattern, f.is_glob] for k, f in s.files.items()}}
           for name, s in sorted(graph.steps.items())}
    text = json.dumps(got, indent=1, sort_keys=True, ensure_ascii=False)
    text = text.replace(str(ROOT), "<ROOT>").replace(os.path.expanduser("~"), "<HOME>") + "\n"
    path = GOLDEN / "lower" / f"{case}.json"
    if UPDATE_GOLDEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{case}: step configurations changed (so would their keys)"


def test_the_contract_methods_and_formats_import_nothing_outside_the_standard_library():
    code = ("import sys, formula.contract.steps, formula.contract.templates, formula.contract.graph, "
            "formula.contract.outcome_rules, formula.methods, formula.formats\n"
            "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split())
    third_party = {m for m in loaded if m not in sys.stdlib_module_names and not m.startswith("_")} - {"formula"}
    assert not third_party, third_party

"""The generated reference is current, and the language guide mentions every block kind."""

import importlib.util

from formula.compiler.schema import SCHEMAS

from conftest import ROOT


def test_reference_is_generated_from_the_schema():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs" / "reference.md").read_text() == gen.render(), \
        "run `python docs/gen_reference.py`"


def test_language_guide_covers_every_block_kind():
    guide = (ROOT / "docs" / "language.md").read_text()
    assert "| header | `formula" in guide
    for kind in set(SCHEMAS) - {"formula"}:
        assert f"**{kind}**" in guide, kind

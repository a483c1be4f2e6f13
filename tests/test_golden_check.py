"""Golden diagnostics: each `tests/golden/check/NAME.formula` beside `NAME.expected`.

A first line `# overrides: a=b c=d` passes command-line overrides. Regenerate the expected
files with FORMULA_UPDATE_GOLDEN=1 and read the diff before committing it.
"""

from pathlib import Path

import pytest

from formula.compiler.diagnostics import render_text
from formula.compiler.pipeline import compile_formula

from conftest import GOLDEN, UPDATE_GOLDEN

CHECK = GOLDEN / "check"
CASES = sorted(p.stem for p in CHECK.glob("*.formula"))


def overrides_of(path: Path) -> list[str]:
    # some cases are not UTF-8 on purpose (their diagnostic says so)
    first = path.read_bytes().decode("utf-8", errors="replace").splitlines()[0]
    return first.split(":", 1)[1].split() if first.startswith("# overrides:") else []


@pytest.mark.parametrize("name", CASES)
def test_diagnostics_match_golden(name, monkeypatch):
    monkeypatch.chdir(CHECK)
    path = Path(f"{name}.formula")
    result = compile_formula(str(path), overrides_of(path))
    assert result.diagnostics, f"{name}: a golden case must produce a diagnostic"
    rendered = render_text(result.diagnostics) + "\n"
    expected = CHECK / f"{name}.expected"
    if UPDATE_GOLDEN:
        expected.write_text(rendered)
    assert rendered == expected.read_text()


def test_there_are_at_least_forty_distinct_mistakes():
    assert len(CASES) >= 40
    codes = set()
    for name in CASES:
        codes.update(line.split("]")[0].split("[")[1] for line in
                     (CHECK / f"{name}.expected").read_text().splitlines()
                     if line.startswith(("error[", "warning[")))
    assert len(codes) >= 30, sorted(codes)


def test_every_diagnostic_points_at_a_file_line_and_column():
    for name in CASES:
        text = (CHECK / f"{name}.expected").read_text()
        for block in text.split("\n\n"):
            if block.startswith(("error", "warning")):
                assert "--> " in block, f"{name}: diagnostic without a location:\n{block}"

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("FORMULA_UPDATE_GOLDEN") == "1"


@pytest.fixture
def golden_dir():
    return GOLDEN

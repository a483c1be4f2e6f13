"""What every `formula` command shares: exit statuses and whether to colour a stream. Kept apart
from `main.py` so the command modules import it, and not each other."""

from __future__ import annotations

import os
from typing import TextIO

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2


def use_color(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ

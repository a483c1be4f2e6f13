"""Gas Town agents from a working directory, as gastown's own role detection assigns them.

Rules (gastown `internal/cmd/role.go`, relative to the town root): `mayor/…` and the town root
are the mayor; `deacon/dogs/boot/…` is boot; `deacon/dogs/<name>/…` a dog; `deacon/…` the
deacon; below a rig, `witness`, `refinery`, `polecats/<name>` and `crew/<name>`. A rig's
`mayor/rig` is a clone of the rig that nobody runs as an agent: no role. The address is the
one Gas Town writes as a bead's `assignee` and as `BD_ACTOR` (`gastown/polecats/nux`,
`deacon-boot`, `deacon/dogs/alpha`), so sessions can be matched to the beads their agent held.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Agent(NamedTuple):
    role: str
    address: str
    rig: str | None = None


def agent_of(cwd: str, town: str) -> Agent | None:
    town = os.path.expanduser(town).rstrip("/") or "/"
    cwd = cwd.rstrip("/") or "/"
    if cwd != town and not cwd.startswith(town.rstrip("/") + "/"):
        return None
    parts = [p for p in cwd[len(town):].split("/") if p]
    if not parts or parts[0] == "mayor":
        return Agent("mayor", "mayor")
    if parts[0] == "deacon":
        if parts[1:2] == ["dogs"] and len(parts) >= 3:
            if parts[2] == "boot":
                return Agent("boot", "deacon-boot")
            return Agent("dog", f"deacon/dogs/{parts[2]}")
        return Agent("deacon", "deacon")
    rig, rest = parts[0], parts[1:]
    if not rest or rig.startswith("."):
        return None
    if rest[0] in ("witness", "refinery"):
        return Agent(rest[0], f"{rig}/{rest[0]}", rig)
    if rest[0] in ("polecats", "crew") and len(rest) >= 2:
        role = "polecat" if rest[0] == "polecats" else "crew"
        return Agent(role, f"{rig}/{rest[0]}/{rest[1]}", rig)
    return None  # `<rig>/mayor/rig` (a clone), the rig root, anything else

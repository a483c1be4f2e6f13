"""One machine-readable line per figure, which `bench/run_all` collects into its table."""

import json


def result(figure: str, ours: float, unit: str, target: str, peer: float | None = None,
           peer_name: str | None = None, ratio: float | None = None) -> None:
    print("RESULT " + json.dumps({"figure": figure, "ours": ours, "unit": unit, "peer": peer,
                                  "peer_name": peer_name, "ratio": ratio, "target": target}))

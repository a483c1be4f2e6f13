"""Confidence intervals and significance by the bootstrap over sessions (docs/export.md).

A measurement that can be resampled gives, per unit (a session; a case of a prompt suite), a sum
and a count for each of its figures, and how a figure is made from them (`ratio`: sum / count;
`exp`: exp(sum / count), perplexity from summed negative log-likelihoods). One replicate draws
as many units as there are, with replacement (multinomial counts, seeded), and makes every
figure from the weighted sums. Two measurements over the same sessions are resampled together
(the same draw for both, paired), so a gate's difference keeps only the noise the two models do
not share.
"""

from __future__ import annotations

from typing import Any

RESAMPLES = 2000
SEED = 0
CONFIDENCE = 0.95
CHUNK = 100  # resamples drawn at a time: memory stays at CHUNK × units however many sessions


def _draws(n: int, resamples: int, seed: int):
    """The resamples in chunks of draw counts (CHUNK × n, each row summing to n), the same for
    every caller with the same n, resamples and seed."""
    import numpy as np

    for start in range(0, resamples, CHUNK):
        rng = np.random.default_rng([seed, start])
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=min(CHUNK, resamples - start)).astype(np.float64)


def weights(n: int, resamples: int = RESAMPLES, seed: int = SEED):
    """All resamples × n draw counts at once (for small n; `replicates` works chunk by chunk)."""
    import numpy as np

    if n == 0:
        return np.zeros((resamples, 0))
    return np.concatenate(list(_draws(n, resamples, seed)))


def replicates(n: int, sums, counts, transform: str = "ratio", resamples: int = RESAMPLES, seed: int = SEED):
    """One figure per replicate (NaN where a replicate drew no unit that counts), from per-unit
    sums and counts of the n units."""
    import numpy as np

    num, den = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if n == 0:
        return np.full(resamples, np.nan)
    out = []
    for w in _draws(n, resamples, seed):
        a, b = w @ num, w @ den
        with np.errstate(divide="ignore", invalid="ignore"):
            out.append(np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan))
    r = np.concatenate(out)
    return np.exp(r) if transform == "exp" else r


def interval(reps, confidence: float = CONFIDENCE) -> list[float] | None:
    """The percentile interval of the replicates, or None when none is a number."""
    import numpy as np

    reps = np.asarray(reps, dtype=np.float64)
    reps = reps[~np.isnan(reps)]
    if not reps.size:
        return None
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(reps, [tail, 1 - tail])
    return [float(lo), float(hi)]


def figure_interval(units: list[str], sums, counts, transform: str = "ratio",
                    confidence: float = CONFIDENCE) -> list[float] | None:
    return interval(replicates(len(units), sums, counts, transform), confidence)


class Resampler:
    """One draw for every unit that some measurements use (the union of their unit lists), so
    that measurements over the same sessions are resampled together (paired); measurements over
    different units are then resampled independently."""

    def __init__(self, unit_lists: list[list[str]], resamples: int = RESAMPLES, seed: int = SEED):
        self.units = sorted({u for units in unit_lists for u in units})
        self.column = {u: i for i, u in enumerate(self.units)}
        self.resamples, self.seed = resamples, seed

    def figure(self, units: list[str], sums, counts, transform: str):
        import numpy as np

        cols = [self.column[u] for u in units]
        num, den = np.zeros(len(self.units)), np.zeros(len(self.units))
        np.add.at(num, cols, np.asarray(sums, dtype=np.float64))
        np.add.at(den, cols, np.asarray(counts, dtype=np.float64))
        return replicates(len(self.units), num, den, transform, self.resamples, self.seed)


def significance(left_reps, right_reps, op: str, confidence: float,
                 test: str = "significant") -> dict[str, Any]:
    """The one-sided test of `left op right` on the paired replicates of the difference.

    `significant`: the comparison holds in all but (1 - confidence) of them: for `>`/`>=` the
    difference's (1 - confidence) quantile is above zero, for `<`/`<=` its `confidence` quantile
    below zero. `not_worse` (non-inferiority): it fails only where the opposite holds so: for
    `>=` the difference's `confidence` quantile is below zero, for `<=` its (1 - confidence)
    quantile above zero; equal models pass. `held` says whether the test passed; `share` is the
    part of the replicates in which the comparison holds."""
    import numpy as np

    d = np.asarray(left_reps, dtype=np.float64) - np.asarray(right_reps, dtype=np.float64)
    d = d[~np.isnan(d)]
    if not d.size:
        return {"test": test, "held": False, "bound": None, "share": None, "difference_interval": None}
    greater = op in (">", ">=")
    if test == "not_worse":
        bound = float(np.quantile(d, confidence if greater else 1 - confidence))
        held = bound >= 0 if greater else bound <= 0
        share = float(np.mean(d >= 0 if greater else d <= 0))
    else:
        bound = float(np.quantile(d, 1 - confidence if greater else confidence))
        held = bound > 0 if greater else bound < 0
        share = float(np.mean(d > 0 if greater else d < 0))
    return {"test": test, "held": held, "bound": bound, "share": share,
            "difference_interval": interval(d, confidence)}

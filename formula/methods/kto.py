"""KTO: Kahneman-Tversky optimisation on sessions labeled desirable or undesirable (trl's
KTOTrainer, stable in trl since 1.x).

No pairs are needed: the data is a pairs block's `labeled.jsonl`, every session its `chosen`
condition calls desirable and every one its `rejected` condition calls undesirable, each on its
own (`{"prompt", "completion", "label"}` in message form). That is what real Gas Town outcomes
give: most beads are merged in one session and burned in none, so few sessions pair, but every
merged and every burned session carries a label. A pairs block that only KTO stages train on
may hold no pair at all.

`desirable_weight` and `undesirable_weight` counter an unequal number of the two (the KTO paper
keeps their weighted counts within 1 to 4/3 of each other); `beta` as in DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from formula.contract.config import setting
from formula.contract.types import Float
from formula.methods import LABELED, Method, TrainRun


@dataclass(frozen=True, kw_only=True)
class Options:
    beta: float = setting(0.1, Float(0, lo_open=True))
    desirable_weight: float = setting(1.0, Float(0, lo_open=True), "weight of the desirable sessions' losses")
    undesirable_weight: float = setting(1.0, Float(0, lo_open=True), "weight of the undesirable sessions' losses")


def dataset(run: TrainRun) -> Any:
    import datasets

    rows = run.read_jsonl("labeled.jsonl")
    if not rows:
        run.fail(f"stage `{run.config.name}`: pairs `{run.config.data.name}` label no session "
                 "desirable or undesirable")
    good = sum(1 for r in rows if r["label"])
    if good == 0 or good == len(rows):
        run.fail(f"stage `{run.config.name}`: KTO needs desirable and undesirable sessions, but all "
                 f"{len(rows)} labeled sessions of pairs `{run.config.data.name}` are "
                 f"{'desirable' if good else 'undesirable'}")
    return datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "label")} for r in rows])


def trainer(run: TrainRun, data: Any) -> Any:
    from trl import KTOConfig, KTOTrainer

    o = run.options
    return KTOTrainer(model=run.model, args=run.args(KTOConfig, beta=o.beta, desirable_weight=o.desirable_weight,
                                                     undesirable_weight=o.undesirable_weight),
                      train_dataset=data, processing_class=run.tokenizer, peft_config=run.peft_config,
                      callbacks=run.callbacks)


METHOD = Method(name="kto", data=LABELED, doc="KTO on sessions labeled desirable or undesirable",
                Options=Options, dataset=dataset, trainer=trainer)

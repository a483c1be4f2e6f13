"""DPO: direct preference optimisation on preference pairs (trl's DPOTrainer).

The data is a pairs block's `pairs.jsonl`: `{"prompt", "chosen", "rejected"}` in message form,
a rejected session paired with a chosen one on the same bead (or the same first prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from formula.contract.config import setting
from formula.contract.types import Float, Symbol
from formula.methods import PAIRS, Method, TrainRun


@dataclass(frozen=True, kw_only=True)
class Options:
    beta: float = setting(0.1, Float(0, lo_open=True))
    loss: str = setting("sigmoid", Symbol(("sigmoid", "ipo", "hinge"), "DPO loss"))


def dataset(run: TrainRun) -> Any:
    import datasets

    rows = run.read_jsonl("pairs.jsonl")
    if not rows:
        run.fail(f"stage `{run.config.name}`: the preference pairs are empty")
    return datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def trainer(run: TrainRun, data: Any) -> Any:
    from trl import DPOConfig, DPOTrainer

    return DPOTrainer(model=run.model, args=run.args(DPOConfig, beta=run.options.beta,
                                                     loss_type=[run.options.loss]),
                      train_dataset=data, processing_class=run.tokenizer, peft_config=run.peft_config,
                      callbacks=run.callbacks)


METHOD = Method(name="dpo", data=PAIRS, doc="direct preference optimisation on preference pairs",
                Options=Options, dataset=dataset, trainer=trainer)

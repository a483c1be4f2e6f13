"""ORPO: odds-ratio preference optimisation on preference pairs (trl's ORPOTrainer, which trl
1.x ships under `trl.experimental.orpo`).

One stage does what SFT followed by DPO does in two: the loss is the chosen side's language
modelling loss plus `beta` (λ in the paper) times the log odds ratio of chosen over rejected.
There is no reference model, so a stage needs no earlier SFT stage and half the memory of DPO.
The data is a pairs block's `pairs.jsonl`, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from formula.contract.config import setting
from formula.contract.types import Float
from formula.methods import PAIRS, Method, TrainRun


@dataclass(frozen=True, kw_only=True)
class Options:
    beta: float = setting(0.1, Float(0, lo_open=True))


def dataset(run: TrainRun) -> Any:
    import datasets

    rows = run.read_jsonl("pairs.jsonl")
    if not rows:
        run.fail(f"stage `{run.config.name}`: pairs `{run.config.data.name}` hold no preference pair")
    return datasets.Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])


def trainer(run: TrainRun, data: Any) -> Any:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOTrainer(model=run.model, args=run.args(ORPOConfig, beta=run.options.beta),
                       train_dataset=data, processing_class=run.tokenizer, peft_config=run.peft_config,
                       callbacks=run.callbacks)


METHOD = Method(name="orpo", data=PAIRS, doc="ORPO on preference pairs, no reference model",
                Options=Options, dataset=dataset, trainer=trainer)

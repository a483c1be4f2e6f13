"""SFT: supervised fine-tuning on a corpus's sessions (trl's SFTTrainer).

The data is the tokenize step's output for the stage's corpus and starting model: token ids
and labels, the loss on assistant turns only unless `assistant_only = false`. With
`packing = true` the corpus is tokenized packed into rows of `max_len` tokens (its own artifact)
and trained padding-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from formula.contract.conditions import matches
from formula.contract.config import setting
from formula.contract.types import Bool
from formula.methods import SESSIONS, Method, TrainRun


@dataclass(frozen=True, kw_only=True)
class Options:
    packing: bool = setting(False, Bool())
    assistant_only: bool = setting(True, Bool(), "loss on assistant tokens only")


def dataset(run: TrainRun) -> Any:
    import datasets

    view = run.config.data
    datasets.disable_caching()  # the data folder is a stored input: nothing may be written into it
    ds = datasets.load_from_disk(str(run.data_dir / view.split))
    if view.where is not None:
        where = view.where
        ds = ds.filter(lambda row: matches(where, {k: row[k] for k in ("role", "outcome", "bead")}))
    if len(ds) == 0:
        run.fail(f"stage `{run.config.name}`: no training example is left after the data's filter")
    keep = {"input_ids", "labels", "seq_lengths"}
    ds = ds.remove_columns([c for c in ds.column_names if c not in keep])
    if not run.options.assistant_only:
        ds = ds.map(lambda row: {"labels": row["input_ids"]})
    return ds


def trainer(run: TrainRun, data: Any) -> Any:
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(model=run.model, args=run.args(SFTConfig, padding_free=run.options.packing,
                                                     dataset_num_proc=None),
                      train_dataset=data, processing_class=run.tokenizer, peft_config=run.peft_config,
                      callbacks=run.callbacks)


METHOD = Method(name="sft", data=SESSIONS, doc="supervised fine-tuning on a corpus", Options=Options,
                dataset=dataset, trainer=trainer, packs=lambda o: bool(o.packing),
                masks=lambda o: o.assistant_only is not False)

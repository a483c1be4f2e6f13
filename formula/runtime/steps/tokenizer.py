"""The tokenizer step: a byte-level BPE trained on a corpus's training split, for a model made
by `init`. Built with the `tokenizers` library and wrapped in `PreTrainedTokenizerFast` (the
`LlamaTokenizer(vocab_file=...)` route yields an empty tokenizer under transformers 5)."""

from __future__ import annotations

import json
from pathlib import Path

from formula.contract.steps import NamedTemplate, TokenizerConfig
from formula.contract.templates import NAMED, SPECIAL
from formula.runtime.step import fail, step_entry
from formula.runtime.steps import typed

LIBRARIES = ("tokenizers", "transformers")


Config = TokenizerConfig  # the step's configuration: formula/contract/steps.py


def texts(corpus: Path, template: str):
    from transformers.utils.chat_template_utils import render_jinja_template

    with open(corpus / "train.jsonl", encoding="utf-8") as fh:
        batch = []
        for line in fh:
            batch.append(json.loads(line)["messages"])
            if len(batch) == 256:
                yield from render_jinja_template(batch, chat_template=template)
                batch = []
        if batch:
            yield from render_jinja_template(batch, chat_template=template)


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    name = cfg.template.name if isinstance(cfg.template, NamedTemplate) else None
    if name is None or name not in NAMED:
        fail("a tokenizer trained by formula needs a named template (chatml or llama3) "
             "so it knows its special tokens")
    specials, eos, pad = SPECIAL[name]
    if cfg.vocab < 256 + len(specials):
        fail(f"vocab = {cfg.vocab} is smaller than the 256 byte tokens and {len(specials)} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab, special_tokens=list(specials), min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts(inputs["corpus"], NAMED[name]), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad,
                                   bos_token=specials[0] if name == "llama3" else None,
                                   additional_special_tokens=[t for t in specials if t not in (eos, pad)])
    fast.chat_template = NAMED[name]
    fast.save_pretrained(output)
    (output / "metrics.json").write_text(json.dumps({"vocab": len(fast)}))


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

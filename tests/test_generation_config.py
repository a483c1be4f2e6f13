"""The model step keeps a model's own generation settings (issue 15, item 4, first half): every
end-of-turn id it lists and its sampling defaults survive, the tokenizer's EOS and the chat
template's end-of-turn token join the EOS ids when missing, and a model without settings gets
them. That they reach the GGUF as llama.cpp's eos/eot/eom ids: tests/test_gguf_families.py."""

import json
from pathlib import Path

import pytest

from formula.contract.steps import NamedTemplate, OwnTokenizer, PathSource

pytest.importorskip("transformers")


def tiny_model(folder: Path, generation: dict | None) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "hi", "[UNK]"]
    inner = Tokenizer(models.WordLevel({t: i for i, t in enumerate(words)}, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  unk_token="[UNK]", additional_special_tokens=words[1:5])
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    if generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder


def model_step(folder: Path, out: Path) -> dict:
    from formula.runtime.steps import model

    cfg = model.Config(name="base", source=PathSource(str(folder)), tokenizer=OwnTokenizer(),
                       template=NamedTemplate("chatml"))
    out.mkdir()
    model.run(cfg, {"weights": folder}, out, out.parent / "work")
    return json.loads((out / "generation_config.json").read_text())


def test_a_models_own_end_of_turn_ids_and_sampling_survive(tmp_path):
    own = {"bos_token_id": 1, "eos_token_id": [0, 3, 4], "do_sample": True, "temperature": 0.6, "top_p": 0.9}
    got = model_step(tiny_model(tmp_path / "m", own), tmp_path / "out")
    # Llama 3's three ids kept in order; chatml's <|im_end|> (2), where assistant turns end, added
    assert got["eos_token_id"] == [0, 3, 4, 2]
    assert (got["do_sample"], got["temperature"], got["top_p"], got["bos_token_id"]) == (True, 0.6, 0.9, 1)


def test_a_model_without_settings_gets_its_eos_and_end_of_turn(tmp_path):
    got = model_step(tiny_model(tmp_path / "m", None), tmp_path / "out")
    assert got["eos_token_id"] == [0, 2] and got["pad_token_id"] == 0

"""The model step: a base model made (`init`), fetched (`hub`) or read (`path`), with its
tokenizer and the formula's chat template, as one standalone model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from formula.contract.steps import (FileTemplate, HubSource, InitSource, ModelConfig, NamedTemplate,
                                    PathSource, TrainedTokenizer)
from formula.contract.templates import NAMED, template_hash
from formula.runtime.step import fail, step_entry
from formula.runtime.steps import typed

LIBRARIES = ("torch", "transformers", "safetensors")

ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
         "mistral": ("MistralConfig", "MistralForCausalLM")}


Config = ModelConfig  # the step's configuration: formula/contract/steps.py


def load_tokenizer(cfg: Config, inputs: dict[str, Path], weights: Path | None):
    from transformers import AutoTokenizer

    t = cfg.tokenizer
    if isinstance(t, (TrainedTokenizer, PathSource)):
        return AutoTokenizer.from_pretrained(inputs["tokenizer"])
    if isinstance(t, HubSource):
        return AutoTokenizer.from_pretrained(t.id, revision=t.revision)
    if weights is None:
        fail(f"model `{cfg.name}` has no tokenizer of its own")
    return AutoTokenizer.from_pretrained(weights)


def chat_template(cfg: Config, inputs: dict[str, Path], tok) -> str:
    t = cfg.template
    if isinstance(t, FileTemplate):
        return Path(inputs["template"]).read_text(encoding="utf-8")
    assert isinstance(t, NamedTemplate)
    if t.name == "own":
        if not getattr(tok, "chat_template", None):
            fail(f"model `{cfg.name}` has no chat template of its own; name one (`template = chatml`)")
        return tok.chat_template
    return NAMED[t.name]


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    import torch
    import transformers

    src = cfg.source
    if isinstance(src, InitSource):
        tok = load_tokenizer(cfg, inputs, None)
        config_cls, model_cls = (getattr(transformers, n) for n in ARCHS[src.arch])
        config = config_cls(vocab_size=len(tok), hidden_size=src.hidden, intermediate_size=src.ffn,
                            num_hidden_layers=src.layers, num_attention_heads=src.heads,
                            num_key_value_heads=src.kv_heads, max_position_embeddings=src.context,
                            tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
        torch.manual_seed(src.seed)
        model = model_cls(config)
        model.save_pretrained(output, safe_serialization=True)
    elif isinstance(src, PathSource):
        weights = Path(inputs["weights"])
        if not (weights / "config.json").is_file():
            fail(f"model `{cfg.name}`: {weights} has no config.json; is it a Hugging Face model folder?")
        shutil.copytree(weights, output, dirs_exist_ok=True)
        tok = load_tokenizer(cfg, inputs, weights)
    else:
        from huggingface_hub import snapshot_download

        assert isinstance(src, HubSource)
        try:
            folder = snapshot_download(src.id, revision=src.revision)
        except Exception as exc:  # network, auth or a missing repository: the user's to fix
            fail(f"model `{cfg.name}`: cannot fetch {src.id}@{src.revision} from the hub: {exc}")
        shutil.copytree(folder, output, dirs_exist_ok=True)
        tok = load_tokenizer(cfg, inputs, Path(folder))
    template = chat_template(cfg, inputs, tok)
    tok.chat_template = template
    tok.save_pretrained(output)
    gen = transformers.GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                        bos_token_id=tok.bos_token_id)
    gen.save_pretrained(output)
    (output / "metrics.json").write_text(json.dumps({"template_sha256": template_hash(template),
                                                     "vocab": len(tok)}))


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

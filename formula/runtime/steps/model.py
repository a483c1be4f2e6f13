"""The model step: a base model made (`init`), fetched (`hub`) or read (`path`), with its
tokenizer and the formula's chat template, as one standalone model folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from formula.contract.steps import (FileTemplate, HubSource, InitSource, ModelConfig, NamedTemplate,
                                    PathSource, TrainedTokenizer)
from formula.contract import hublock, weights
from formula.contract.templates import NAMED, render_problem, template_hash
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
        return AutoTokenizer.from_pretrained(hub_snapshot(cfg, t, tokenizer_only=True)[0])
    if weights is None:
        fail(f"model `{cfg.name}` has no tokenizer of its own")
    return AutoTokenizer.from_pretrained(weights)


def chat_template(cfg: Config, inputs: dict[str, Path], tok) -> str:
    t = cfg.template
    if isinstance(t, FileTemplate):
        return checked_template(cfg, Path(inputs["template"]).read_text(encoding="utf-8"), str(inputs["template"]))
    assert isinstance(t, NamedTemplate)
    if t.name == "own":
        if not getattr(tok, "chat_template", None):
            fail(f"model `{cfg.name}` has no chat template of its own; name one (`template = chatml`)")
        return checked_template(cfg, tok.chat_template, f"the chat template of model `{cfg.name}`'s tokenizer")
    return NAMED[t.name]


def checked_template(cfg: Config, text: str, where: str) -> str:
    """What `formula check` says of a template file, said here of every template, a hub
    model's own included: one that does not parse or that Jinja's sandbox refuses fails."""
    problem = render_problem(text)
    if problem is not None and problem.code != "template-render":
        fail(f"model `{cfg.name}`: {where}{f', line {problem.line}' if problem.line else ''}: "
             f"the chat template {problem.describe()}")
    return text


def copy_weights(cfg: Config, folder: Path, output: Path, what: str) -> None:
    """A model folder into the output with its weights as safetensors (formula/contract/weights.py):
    pickle files are never copied; a model with pickle weights only is refused, or with
    `allow_pickle = true` read once (torch's weights_only loader) and stored as safetensors."""
    shutil.copytree(folder, output, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*weights.PICKLE_PATTERNS))
    pickles = weights.pickle_files(str(folder))
    if weights.safetensors_files(str(folder)):
        if pickles:
            print(f"model `{cfg.name}`: {what} also holds pickle weights ({', '.join(pickles)}); "
                  "they are left out, its safetensors are used", flush=True)
        return
    if not pickles:
        fail(f"model `{cfg.name}`: {what} holds no safetensors weights")
    if not cfg.allow_pickle:
        fail(f"model `{cfg.name}`: " + weights.refusal(what, pickles, cfg.name))
    print(f"model `{cfg.name}`: reading the pickle weights {', '.join(pickles)} (allow_pickle = true) "
          "and storing them as safetensors", flush=True)
    pickle_to_safetensors(folder, output)


def pickle_to_safetensors(folder: Path, output: Path) -> None:
    """The one place a model's pickle weights are read (allow_pickle = true), with torch's
    weights_only loader, and stored as safetensors."""
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder, use_safetensors=False, dtype="auto").save_pretrained(output)


def hub_snapshot(cfg: Config, src: HubSource, tokenizer_only: bool = False) -> tuple[Path, list[str]]:
    """The Hugging Face cache's snapshot of a hub model at its pinned commit, with the files the
    model needs (or its tokenizer's only) fetched into it, and their names. Pickle weights are
    refused before anything is downloaded unless the model allows them."""
    from formula.runtime import hub

    commit, names, sums = src.commit, list(src.files), src.sha256
    if not commit:
        print(f"model `{cfg.name}`: {src.id}@{src.revision} has no lock entry; resolving it now "
              "(`formula lock` pins it, so that a moved revision changes nothing unnoticed)", flush=True)
        try:
            pin, _ = hub.resolve(src.id, src.revision)
        except hub.HubError as exc:
            fail(f"model `{cfg.name}`: {exc}")
        commit, names, sums = pin.commit, list(pin.names), pin.sha256sums
    what = f"hub model {src.id}@{src.revision} ({commit[:12]})"
    if tokenizer_only:
        names = hublock.tokenizer_files(tuple(names))
    elif not any(n.endswith(".safetensors") for n in names):
        pickles = [n for n in names if n.endswith(weights.PICKLE_SUFFIXES)]
        if not pickles:
            fail(f"model `{cfg.name}`: {what} holds no safetensors weights")
        if not cfg.allow_pickle:
            fail(f"model `{cfg.name}`: " + weights.refusal(what, pickles, cfg.name))
        print(f"model `{cfg.name}`: warning: {what} has pickle weights only ({', '.join(pickles)}); "
              "fetching them (allow_pickle = true)", flush=True)
    try:
        snapshot = hub.fetch(src.id, commit, names)
        hub.verify(src.id, commit, snapshot, [s for s in sums if s.split("  ", 1)[1] in names])
    except hub.HubError as exc:
        fail(f"model `{cfg.name}`: {exc}")
    return snapshot, names


def hub_files(cfg: Config, snapshot: Path, names: list[str], output: Path) -> list[str]:
    """A hub model's files into the output, but for its safetensors weights, which are returned
    to be shared with the cache once nothing else is written (`share_weights`). Pickle weights
    (allowed) are read once and stored as safetensors."""
    later = []
    for name in names:
        if name.endswith(".safetensors"):
            later.append(name)
        elif not name.endswith(weights.PICKLE_SUFFIXES):
            shutil.copyfile(snapshot / name, output / name)
    if not later:
        print(f"model `{cfg.name}`: reading the pickle weights and storing them as safetensors", flush=True)
        pickle_to_safetensors(snapshot, output)
    return later


def share_weights(cfg: Config, snapshot: Path, names: list[str], output: Path) -> None:
    """Last, after every file the step writes: a linked file is never written to
    (formula/runtime/hub.py says why a link is safe in the store)."""
    from formula.runtime import hub

    shared = hub.Shared()
    for name in names:
        hub.share(snapshot / name, output / name, shared)
    print(f"model `{cfg.name}`: weights {shared.describe()}", flush=True)


def generation_config(tok, template: str, output: Path):
    """The model's own generation settings when it has them (copied with its folder), kept whole:
    every end-of-turn id it lists (Llama 3 lists three), its sampling defaults. The tokenizer's
    EOS and the chat template's end-of-turn token are added to the EOS ids when missing, so
    generation stops where an assistant turn ends; a model without settings gets those ids."""
    import transformers

    from formula.contract.templates import analyse

    own = output / "generation_config.json"
    gen = transformers.GenerationConfig.from_pretrained(output) if own.is_file() else transformers.GenerationConfig(
        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    eos = gen.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    end = analyse(template).end_of_turn
    for extra in (tok.eos_token_id, tok.convert_tokens_to_ids(end) if end else None):
        if isinstance(extra, int) and extra != tok.unk_token_id and extra not in ids:
            ids.append(extra)
    gen.eos_token_id = ids[0] if len(ids) == 1 else ids
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    return gen


def run(cfg: Config, inputs: dict[str, Path], output: Path, work: Path) -> None:
    import torch
    import transformers

    src = cfg.source
    linked: list[str] = []
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
        folder = Path(inputs["weights"])
        if not (folder / "config.json").is_file():
            fail(f"model `{cfg.name}`: {folder} has no config.json; is it a Hugging Face model folder?")
        copy_weights(cfg, folder, output, f"the model folder {folder}")
        tok = load_tokenizer(cfg, inputs, folder)
    else:
        assert isinstance(src, HubSource)
        snapshot, names = hub_snapshot(cfg, src)
        linked = hub_files(cfg, snapshot, names, output)
        tok = load_tokenizer(cfg, inputs, snapshot)
    template = chat_template(cfg, inputs, tok)
    tok.chat_template = template
    tok.save_pretrained(output)
    generation_config(tok, template, output).save_pretrained(output)
    (output / "metrics.json").write_text(json.dumps({"template_sha256": template_hash(template),
                                                     "vocab": len(tok)}))
    if linked:
        share_weights(cfg, snapshot, linked, output)


main = step_entry(None, typed(Config, run))

if __name__ == "__main__":
    main()

"""GGUF for every family the converter knows (issue 15, item 5): a tiny random model of each,
made with transformers' own config classes, converted, and run in llama.cpp against
transformers: logits (f32 ≤ 1e-3 with an f32 KV cache, f16 ≤ 2e-2, top-1 equal at every
position but a random model's near-ties), tokenization and chat rendering identical. Each model sets what its family is about (Llama 3 rope scaling,
soft-capping, norm offsets, a sliding window shorter than the prompts, a local rope base,
q/k norms, fused projections) so that converting it wrongly moves the logits far past the
tolerance. Figures are printed (run with -s)."""

import inspect
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from test_export import CONVERSATION, PROMPTS, STRINGS, hf, hf_logits, prompt_ids  # noqa: E402

from formula.runtime.export.convert import convert  # noqa: E402
from formula.runtime.export.llama import ChatRenderer, logits, metadata, open_gguf  # noqa: E402

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A ChatML template with the assistant span marked, as training templates are.
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
            "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

WINDOW = 8  # a sliding window shorter than every prompt, so it shows
LOCAL_BASE = 100.0  # Gemma 3's local rope base, far from the default 10000
# family → (transformers config class, model class, the family's own settings)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(tie_word_embeddings=False, sliding_window=None)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=32, tie_word_embeddings=True)),
    # Gemma's head_dim is not hidden / heads (Gemma 2 2B: 256 against 2304 / 8), nor here.
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        head_dim=32, query_pre_attn_scalar=32, attn_logit_softcapping=0.05, final_logit_softcapping=0.3,
        sliding_window=WINDOW)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        num_hidden_layers=6, head_dim=32, query_pre_attn_scalar=32, sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                     "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_BASE}})),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(tie_word_embeddings=False, sliding_window=None)),
}
# Gemma 3 as most of its checkpoints are: the text model of gemma3_text inside a multimodal one.
FAMILIES["gemma3"] = ("Gemma3TextConfig", "Gemma3ForConditionalGeneration", FAMILIES["gemma3_text"][2])
MULTIMODAL = {"gemma3": ("Gemma3Config", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=28, patch_size=14))}


def chat_tokenizer(special: list[str], template: str, eos: str):
    """A byte-level BPE trained here (no hub), wrapped as transformers holds it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    text = STRINGS + PROMPTS + [m["content"] for m in CONVERSATION] + [inspect.getsource(m) for m in (json, textwrap)]
    inner.train_from_iterator(text, trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token=eos, pad_token=eos)
    tok.chat_template = template
    return tok


def random_model(folder: Path, family: str, tok, **overrides) -> Path:
    """A tiny random model of `family`, saved as safetensors with its tokenizer. Norm weights
    are moved off their initial value and Q/K scaled up, so that norm offsets, q/k norms and
    the rotary layout all move the logits when converted wrongly."""
    import torch
    import transformers

    config_cls, model_cls, own = FAMILIES[family]
    settings = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    settings.update(own)
    settings.update(overrides)
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**settings)
    if family in MULTIMODAL:
        outer, vision = MULTIMODAL[family]
        config = getattr(transformers, outer)(text_config=config, vision_config=vision)
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
            if any(k in name for k in ("q_proj", "k_proj", "qkv_proj")):
                p.mul_(8)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer(SPECIAL, TEMPLATE, "<|endoftext|>")


# Phi-3's long-context rope (Phi-3.5-mini, Phi-3-mini-128k), prompts longer than its original
# context: transformers then uses the long factors, as llama.cpp does for any context longer.
LONGROPE = {"original_max_position_embeddings": 16, "rope_parameters": {
    "rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 16,
    "long_factor": [13.7, 6.4, 1.8, 1.3, 17.3, 19.3, 13.1, 15.6],
    "short_factor": [1.5, 1.9, 1.8, 1.0, 1.9, 1.0, 1.7, 1.2]}}
# Linear rope scaling: Gemma 3 4B and up scale their global layers' rope only.
VARIANTS = {"phi3 longrope": ("phi3", LONGROPE),
            "llama linear": ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 4.0,
                                                           "rope_theta": 10000.0}}),
            "gemma3_text linear": ("gemma3_text", {"rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_BASE}}})}


@pytest.fixture(scope="module", params=sorted(FAMILIES) + sorted(VARIANTS))
def family_model(request, tokenizer, tmp_path_factory):
    family, overrides = VARIANTS.get(request.param, (request.param, {}))
    folder = random_model(tmp_path_factory.mktemp(family) / "model", family, tok=tokenizer, **overrides)
    return request.param, family, folder


def test_the_registry_is_what_the_checker_knows():
    from formula.formats.gguf import ARCHITECTURES
    from formula.runtime.export.families import FAMILIES as REGISTRY

    assert set(REGISTRY) == set(ARCHITECTURES) >= set(FAMILIES)


@pytest.mark.parametrize("out_type,tolerance", [("f32", 1e-3), ("f16", 2e-2)])
def test_family_converts_with_parity(family_model, tmp_path, out_type, tolerance):
    case, family, folder = family_model
    tok, model = hf(folder)
    path = convert(folder, tmp_path / f"{family}-{out_type}.gguf", out_type).path
    worst, agree, ties = 0.0, 0, 0
    with open_gguf(path, logits_all=True) as llm:
        for s in STRINGS:
            assert llm.tokenize(s.encode(), add_bos=False, special=True) == \
                tok(s, add_special_tokens=False)["input_ids"], s
        for p in PROMPTS:
            _, ids = prompt_ids(tok, p)
            ours, theirs = logits(llm, ids), hf_logits(model, ids)
            worst = max(worst, float(np.abs(ours[-1] - theirs[-1]).max()))
            same = ours.argmax(-1) == theirs.argmax(-1)
            agree += int(same[-1])
            # Top-1 equal at every position, but where transformers' own top two are closer
            # than the difference (a random model's near-ties, which f16 rounding may flip).
            top2 = np.sort(theirs, axis=-1)[:, -2:]
            tie = top2[:, 1] - top2[:, 0] <= 2 * np.abs(ours - theirs).max(-1)
            assert (same | tie).all(), p
            ties += int((~same & tie).sum())
        rendered = ChatRenderer(llm).ids(CONVERSATION)
    expected = tok(tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]
    print(f"\n{case} {out_type}: max abs last-position logit difference {worst:.3g} (limit {tolerance}), "
          f"top-1 at the last position {agree}/{len(PROMPTS)}, near-ties flipped anywhere {ties}, "
          f"chat of {len(expected)} ids identical: {rendered == expected}")
    assert rendered == expected
    assert worst < tolerance


def test_family_metadata(family_model, tmp_path):
    """The keys each family is about, as llama.cpp reads them."""
    _, family, folder = family_model
    converted = convert(folder, tmp_path / "m.gguf", "f16")
    assert converted.caveats == ()  # nothing here runs differently in llama.cpp
    meta = metadata(converted.path)
    arch = meta["general.architecture"]
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    rope = config.get("rope_parameters") or {}
    if rope.get("rope_type") == "llama3":
        reader = __import__("gguf").GGUFReader(tmp_path / "m.gguf")
        assert "rope_freqs.weight" in {t.name for t in reader.tensors}
    if rope.get("full_attention", rope).get("rope_type") == "linear":
        assert meta[f"{arch}.rope.scaling.type"] == "linear"
        assert meta[f"{arch}.rope.scaling.factor"] == rope.get("full_attention", rope)["factor"]
    if family.startswith("gemma"):
        assert meta[f"{arch}.attention.sliding_window"] == WINDOW
        assert list(meta[f"{arch}.attention.sliding_window_pattern"]) == [
            t == "sliding_attention" for t in config["layer_types"]]
    if family == "gemma2":
        assert meta["gemma2.attn_logit_softcapping"] == pytest.approx(0.05)
        assert meta["gemma2.final_logit_softcapping"] == pytest.approx(0.3)
    if family.startswith("gemma3"):
        assert arch == "gemma3" and meta["gemma3.rope.freq_base_swa"] == LOCAL_BASE
    if family == "phi3":
        assert arch == "phi3"
        if config["rope_parameters"]["rope_type"] == "longrope":  # 512 / 16: sqrt(1 + ln 32 / ln 16)
            assert meta["phi3.rope.scaling.attn_factor"] == pytest.approx(1.5)


LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eom_id|>", "<|eot_id|>"]


def header_template(end: str) -> str:
    """Llama 3's chat layout, its assistant span marked, turns ended by `end`."""
    return ("{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
            "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}" + end + "{% endgeneration %}"
            "{% else %}{{ m.content }}" + end + "{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def stops_model(folder: Path, special: list[str], eos: str, end: str, stops: list[str]) -> tuple[Path, dict]:
    """A tiny llama whose generation_config.json lists several end-of-turn ids, as the model
    step leaves it for Llama 3 (<|end_of_text|>, <|eom_id|>, <|eot_id|>)."""
    tok = chat_tokenizer(special, header_template(end), eos)
    random_model(folder, "llama", tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    ids = {s: tok.convert_tokens_to_ids(s) for s in special}
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids[s] for s in stops]}))
    return folder, ids


def stops_at(llm, token: int) -> bool:
    """Whether llama-cpp-python's generation ends when the model's next token is `token`
    (every other token masked out)."""
    from llama_cpp import LogitsProcessorList

    def only(_ids, scores):
        forced = np.full_like(scores, -np.inf)
        forced[token] = 0.0
        return forced

    llm.reset()
    out = llm.create_completion("hello", max_tokens=4, temperature=0.0, logits_processor=LogitsProcessorList([only]))
    choice = out["choices"][0]
    return choice["finish_reason"] == "stop" and choice["text"] == "" and out["usage"]["completion_tokens"] <= 1


@pytest.mark.parametrize("names", ["llama3", "unknown to llama.cpp"])
def test_every_end_of_turn_id_stops_llama_cpp(tmp_path, names):
    """Llama 3's three ids land in eos/eot/eom and llama.cpp ends generation at each. With
    names llama.cpp does not know (it also recognises `<|eot_id|>` and the like by their text),
    the keys alone must make it stop."""
    if names == "llama3":
        special, eos, end, stops = LLAMA3_SPECIAL, "<|end_of_text|>", "<|eot_id|>", \
            ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
    else:
        special = ["<|first|>", "<|stop_a|>", "<|head|>", "<|/head|>", "<|stop_b|>", "<|stop_c|>"]
        eos, end, stops = "<|stop_a|>", "<|stop_c|>", ["<|stop_a|>", "<|stop_b|>", "<|stop_c|>"]
        special = [s.replace("<|head|>", "<|start_header_id|>").replace("<|/head|>", "<|end_header_id|>")
                   for s in special]
    folder, ids = stops_model(tmp_path / "model", special, eos, end, stops)
    path = convert(folder, tmp_path / "m.gguf", "f32").path
    meta = metadata(path)
    assert meta["tokenizer.ggml.eos_token_id"] == ids[eos]
    assert meta["tokenizer.ggml.eot_token_id"] == ids[end]  # where the template ends assistant turns
    assert meta["tokenizer.ggml.eom_token_id"] == ids[stops[1]]
    with open_gguf(path) as llm:
        import llama_cpp

        eog = {s for s in stops if llama_cpp.llama_vocab_is_eog(llm._model.vocab, ids[s])}
        assert eog == set(stops)
        assert all(stops_at(llm, ids[s]) for s in stops)
        assert not stops_at(llm, ids["<|start_header_id|>"])  # an ordinary special token does not stop it
    print(f"\n{names}: eos/eot/eom = {[meta[f'tokenizer.ggml.{k}_token_id'] for k in ('eos', 'eot', 'eom')]}, "
          f"generation stops at each of {stops}")


def test_the_gguf_step_names_end_of_turn_ids_llama_cpp_would_not_stop_at(tmp_path):
    """Four end-of-turn ids llama.cpp does not know by name: three fit its eos/eot/eom keys, the
    fourth cannot, and the gguf step's check says which."""
    from formula.runtime.formats.gguf import never_stops

    special = ["<|stop_a|>", "<|start_header_id|>", "<|end_header_id|>", "<|stop_b|>", "<|stop_c|>", "<|stop_d|>"]
    stops = ["<|stop_a|>", "<|stop_b|>", "<|stop_c|>", "<|stop_d|>"]
    folder, ids = stops_model(tmp_path / "model", special, "<|stop_a|>", "<|stop_b|>", stops)
    path = convert(folder, tmp_path / "m.gguf", "f16").path
    assert never_stops(path, [ids[s] for s in stops]) == [ids["<|stop_d|>"]]


def test_the_gguf_step_refuses_a_file_that_would_not_stop(tmp_path, capsys):
    from formula.contract.steps import ExportConfig
    from formula.runtime.formats import gguf as step

    special = ["<|stop_a|>", "<|start_header_id|>", "<|end_header_id|>", "<|stop_b|>", "<|stop_c|>", "<|stop_d|>"]
    stops = ["<|stop_a|>", "<|stop_b|>", "<|stop_c|>"]
    folder, ids = stops_model(tmp_path / "model", special, "<|stop_a|>", "<|stop_b|>", stops)
    (folder / "chat_template.jinja").write_text(header_template("<|stop_b|>"))
    for out in ("three", "four"):
        (tmp_path / out).mkdir()
    step.run(ExportConfig(export="chat", quant="f16"), {"model": folder}, tmp_path / "three", tmp_path)
    assert (tmp_path / "three" / "gguf.json").is_file()
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids[s] for s in special[3:] + [special[0]]]}))
    with pytest.raises(SystemExit):
        step.run(ExportConfig(export="chat", quant="f16"), {"model": folder}, tmp_path / "four", tmp_path)
    err = capsys.readouterr().err
    # eos: the tokenizer's <|stop_a|>, eot: the template's <|stop_b|>, eom: <|stop_c|>; no key is left
    assert f"would not end generation at token ids [{ids['<|stop_d|>']}]" in err, err


def test_what_llama_cpp_runs_differently_is_said(tokenizer, tmp_path):
    """Mistral's sliding window, which llama.cpp does not apply: converted, with a caveat."""
    folder = random_model(tmp_path / "model", "mistral", tokenizer, sliding_window=4096)
    caveats = convert(folder, tmp_path / "m.gguf", "f16").caveats
    assert len(caveats) == 1 and "past 4096 tokens" in caveats[0]

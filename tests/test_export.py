"""GGUF export: the converter and quantizer against transformers, on the example's trained model.
Figures are printed (run with -s to see them)."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import artifact

pytest.importorskip("llama_cpp")

from formula.runtime.export.convert import ConvertError, convert  # noqa: E402
from formula.runtime.export.llama import logits, metadata, open_gguf  # noqa: E402
from formula.runtime.export.quantize import quantize  # noqa: E402

STRINGS = [
    "def merge(queue):\n    for bead in queue:\n        yield bead.id  # gt-123\n",
    "naïve café — 東京 🚀 Ünïcödé",
    "spaces:    four\t\ttabs\n\n\nthree newlines   trailing   ",
    "<|im_start|>user\nMerge the queue for gastown.<|im_end|>\n<|im_start|>assistant\n",
    "x=1;y=2\r\nprint(x+y)  1234567890 3.14159",
    "",
]
PROMPTS = ["Merge the queue for gastown.", "Check on the polecats working in beads.",
           "Review the cache change on my branch.", "Which beads block the gastown release?",
           "Fix the off-by-one in parser.py that bead gt-42 reports.", "Hello"]


@pytest.fixture(scope="module")
def assembled(built_example):
    project, store = built_example
    return artifact(project, store, "assemble.tiny_chat"), project, store


def hf(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()


def hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def prompt_ids(tok, prompt):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    return text, tok(text, add_special_tokens=False)["input_ids"]


def test_llama_cpp_tokenizes_like_transformers(assembled):
    folder, project, store = assembled
    tok, _ = hf(folder)
    gguf = artifact(project, store, "gguf.gguf.f16") / "model.gguf"
    with open_gguf(gguf, vocab_only=True) as llm:
        for s in STRINGS:
            ours = llm.tokenize(s.encode(), add_bos=False, special=True)
            assert ours == tok(s, add_special_tokens=False)["input_ids"], s
    print(f"\ntokenization: {len(STRINGS)} strings identical")


@pytest.mark.parametrize("out_type,tolerance", [("f32", 1e-3), ("f16", 2e-2)])
def test_last_position_logits_match(assembled, tmp_path, out_type, tolerance):
    folder, _, _ = assembled
    tok, model = hf(folder)
    path = convert(folder, tmp_path / f"m-{out_type}.gguf", out_type).path
    worst = 0.0
    with open_gguf(path, logits_all=True) as llm:
        for p in PROMPTS:
            _, ids = prompt_ids(tok, p)
            diff = np.abs(logits(llm, ids)[-1] - hf_logits(model, ids)[-1]).max()
            worst = max(worst, float(diff))
    print(f"\n{out_type}: max abs last-position logit difference {worst:.3g} (limit {tolerance})")
    assert worst < tolerance


def test_q8_0_keeps_the_top_token(assembled):
    folder, project, store = assembled
    tok, model = hf(folder)
    gguf = artifact(project, store, "gguf.gguf.q8_0") / "model.gguf"
    agree = 0
    with open_gguf(gguf, logits_all=True) as llm:
        for p in PROMPTS:
            _, ids = prompt_ids(tok, p)
            agree += int(logits(llm, ids)[-1].argmax() == hf_logits(model, ids)[-1].argmax())
    print(f"\nq8_0: top-1 agrees on {agree}/{len(PROMPTS)} prompts")
    assert agree == len(PROMPTS)


def test_bf16_output_loads_and_agrees(assembled, tmp_path):
    folder, _, _ = assembled
    tok, model = hf(folder)
    path = convert(folder, tmp_path / "m-bf16.gguf", "bf16").path
    with open_gguf(path, logits_all=True) as llm:
        _, ids = prompt_ids(tok, PROMPTS[0])
        assert logits(llm, ids)[-1].argmax() == hf_logits(model, ids)[-1].argmax()
    types = {t for t in json.loads(json.dumps(_types(path)))}
    assert "BF16" in types and "F32" in types  # matrices bf16, norms f32


def _types(path):
    from formula.runtime.export.llama import tensor_types

    return tensor_types(path)


def test_the_gguf_carries_the_trained_template(assembled):
    folder, project, store = assembled
    template = (folder / "chat_template.jinja").read_text()
    for step in ("gguf.gguf.f16", "gguf.gguf.q8_0"):
        out = artifact(project, store, step)
        assert metadata(out / "model.gguf")["tokenizer.chat_template"] == template
        info = json.loads((out / "gguf.json").read_text())
        stats = json.loads((artifact(project, store, "tokenize.sessions.tiny") / "stats.json").read_text())
        assert info["template_sha256"] == stats["template_sha256"]
    meta = metadata(artifact(project, store, "gguf.gguf.q8_0") / "model.gguf")
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.pre"] == "gpt-2"


def _random_model(folder: Path, source: Path, arch: str, hidden: int, heads: int, kv: int, ffn: int):
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(source)
    cls, cfg = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[arch]
    torch.manual_seed(0)
    config = cfg(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                 num_key_value_heads=kv, intermediate_size=ffn, max_position_embeddings=512,
                 tie_word_embeddings=False, eos_token_id=tok.eos_token_id)
    cls(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, folder / name)
    return folder


def test_qwen2_converts_with_parity(assembled, tmp_path):
    folder, _, _ = assembled
    q = _random_model(tmp_path / "qwen2", folder, "qwen2", 128, 4, 2, 256)
    tok, model = hf(q)
    path = convert(q, tmp_path / "q.gguf", "f32").path
    with open_gguf(path, logits_all=True) as llm:
        for s in STRINGS[:3]:
            assert llm.tokenize(s.encode(), add_bos=False, special=True) == \
                tok(s, add_special_tokens=False)["input_ids"]
        _, ids = prompt_ids(tok, PROMPTS[0])
        diff = float(np.abs(logits(llm, ids)[-1] - hf_logits(model, ids)[-1]).max())
    print(f"\nqwen2 f32: max abs logit difference {diff:.3g}")
    assert diff < 1e-3


def test_quantizing_rows_the_type_cannot_take_is_an_error(assembled, tmp_path):
    folder, _, _ = assembled
    odd = _random_model(tmp_path / "odd", folder, "llama", 80, 4, 2, 160)  # rows of 80, 160
    f32 = convert(odd, tmp_path / "odd.gguf", "f32").path
    with pytest.raises(ConvertError, match="rows divisible by 32"):
        quantize(f32, tmp_path / "odd-q8.gguf", "q8_0")
    with pytest.raises(ConvertError, match="rows divisible by 256"):
        quantize(f32, tmp_path / "odd-q4.gguf", "q4_k_m")
    assert not (tmp_path / "odd-q8.gguf").exists()


def test_k_quants_on_shapes_that_fit(assembled, tmp_path):
    folder, project, store = assembled
    f32 = convert(folder, tmp_path / "m.gguf", "f32").path
    for q in ("q4_k_m", "q6_k", "q5_k_m", "q4_0"):
        quantize(f32, tmp_path / f"m-{q}.gguf", q)
        types = _types(tmp_path / f"m-{q}.gguf")
        assert not {"F16", "BF16"} & set(types), (q, types)


def test_what_the_converter_refuses(tmp_path):
    with pytest.raises(ConvertError, match="no config.json"):
        convert(tmp_path, tmp_path / "x.gguf")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConvertError, match="model type `gpt2` is not converted"):
        convert(tmp_path, tmp_path / "x.gguf")


CONVERSATION = [
    {"role": "system", "content": "You are the refinery of gastown."},
    {"role": "user", "content": "Merge the queue for gastown."},
    {"role": "assistant", "content": "Merged gt-12 from polecat/nux into main; the queue is empty."},
    {"role": "user", "content": "Anything   left?\n\tCheck again — naïvely 🚀"},
]


def test_llama_cpp_renders_the_embedded_template_to_the_same_ids(assembled):
    """The served path (llama.cpp's chat formatter on the GGUF's own template) against the
    trained path (transformers on the assembled folder), token for token."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    folder, project, store = assembled
    tok, _ = hf(folder)
    expected = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    expected_ids = tok(expected, add_special_tokens=False)["input_ids"]
    gguf = artifact(project, store, "gguf.gguf.q8_0") / "model.gguf"
    meta = metadata(gguf)
    with open_gguf(gguf, vocab_only=True) as llm:
        eos = llm.detokenize([llm.token_eos()], special=True).decode()
        formatter = Jinja2ChatFormatter(template=meta["tokenizer.chat_template"], eos_token=eos, bos_token="")
        prompt = formatter(messages=CONVERSATION).prompt
        assert prompt == expected
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == expected_ids
    print(f"\nconversation of {len(CONVERSATION)} turns: {len(expected_ids)} ids identical")


def test_every_artifact_after_tokenization_shows_one_template_hash(assembled):
    from conftest import run_formula

    _, project, store = assembled
    seen = {}
    for step in ("tokenize.sessions.tiny", "train.lm", "train.sft", "train.dpo", "assemble.tiny_chat",
                 "gguf.gguf.f16", "gguf.gguf.q8_0", "eval.gate"):
        shown = run_formula(project, store, "show", f"tiny:{step}").stdout
        line = next((l for l in shown.splitlines() if "template_sha256" in l), None)
        assert line, f"{step}: no template hash in `formula show`"
        seen[step] = line.split()[-1]
    assert len(set(seen.values())) == 1, seen


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A tiny llama whose tokenizer is a real SentencePiece BPE model (byte fallback, `▁`), made
    the way hub models of that kind are: trained by sentencepiece, loaded by transformers."""
    spm = pytest.importorskip("sentencepiece")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    tmp = tmp_path_factory.mktemp("spm")
    text = "\n".join(STRINGS + PROMPTS + [m["content"] for m in CONVERSATION]) * 3
    text += "\n" + "\n".join(p.read_text()[:4000] for p in sorted(Path(__file__).parent.glob("*.py")))
    (tmp / "corpus.txt").write_text(text)
    spm.SentencePieceTrainer.train(
        input=str(tmp / "corpus.txt"), model_prefix=str(tmp / "tokenizer"), vocab_size=800,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, remove_extra_whitespaces=False, minloglevel=2)
    source = tmp / "source"
    source.mkdir()
    (tmp / "tokenizer.model").rename(source / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(source)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    folder = tmp / "model"
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_sentencepiece_tokenizer_converts_with_parity(sentencepiece_model, tmp_path):
    tok, model = hf(sentencepiece_model)
    path = convert(sentencepiece_model, tmp_path / "spm.gguf", "f32").path
    meta = metadata(path)
    assert meta["tokenizer.ggml.model"] == "llama"
    assert list(meta["tokenizer.ggml.token_type"]).count(6) == 256  # every <0xNN> is a byte token
    chat = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    with open_gguf(path, logits_all=True) as llm:
        # Text after a special token, which is where every chat turn starts: identical.
        for s in [chat] + [f"<|im_start|>user\n{s}<|im_end|>\n" for s in STRINGS]:
            assert llm.tokenize(s.encode(), add_bos=False, special=True) == \
                tok(s, add_special_tokens=False)["input_ids"], s
        # Raw text at the very start: transformers adds the `▁` that llama.cpp leaves out there.
        for s in [s for s in STRINGS if not s.startswith("<|")]:
            assert llm.tokenize((" " + s).encode() if s else b"", add_bos=False, special=True) == \
                tok(s, add_special_tokens=False)["input_ids"], s
        ids = tok(chat, add_special_tokens=False)["input_ids"]
        diff = float(np.abs(logits(llm, ids)[-1] - hf_logits(model, ids)[-1]).max())
    print(f"\nSentencePiece llama f32: {len(STRINGS) + 1} chat strings identical, "
          f"max abs logit difference {diff:.3g}")
    assert diff < 1e-3


def test_sentencepiece_model_quantizes(sentencepiece_model, tmp_path):
    path = convert(sentencepiece_model, tmp_path / "spm.gguf", "f16").path
    quantize(path, tmp_path / "spm-q8.gguf", "q8_0")
    with open_gguf(tmp_path / "spm-q8.gguf", vocab_only=True) as llm:
        first = llm.tokenize("<|im_start|>user\nhi".encode(), add_bos=False, special=True)[0]
    tok, _ = hf(sentencepiece_model)
    assert first == tok.convert_tokens_to_ids("<|im_start|>")

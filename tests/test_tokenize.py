"""Tokenization: masks cover assistant tokens only (checked token by token), the end-of-turn
token is learned, and the tokenized example holds no planted secret."""

import json
from pathlib import Path

import pytest

from conftest import ROOT

pytest.importorskip("transformers")

from formula.runtime.steps import corpus, tokenize, tokenizer  # noqa: E402
from formula.contract.steps import GastownSource, NamedTemplate  # noqa: E402
from formula.contract.templates import CHATML  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    data = ROOT / "examples" / "data"
    src = GastownSource(input="source0", projects=str(data / "projects"), beads=str(data / "beads" / "issues.jsonl"),
                        town="/home/op/gt")
    (tmp / "corpus").mkdir()
    corpus.run(corpus.Config(name="sessions", sources=(src,), holdout=0.1, max_dropped=0.5),
               {"source0": Path(f"{data}/projects/**/*.jsonl"), "source0_beads": data / "beads" / "issues.jsonl"},
               tmp / "corpus", tmp / "w")
    (tmp / "tok").mkdir()
    tokenizer.run(tokenizer.Config(vocab=1024, corpus="sessions", template=NamedTemplate("chatml")),
                  {"corpus": tmp / "corpus"}, tmp / "tok", tmp / "w")
    (tmp / "out").mkdir()
    tokenize.run(tokenize.Config(corpus="sessions", model="tiny", max_len=512, workers=2),
                 {"corpus": tmp / "corpus", "model": tmp / "tok"}, tmp / "out", tmp / "w")
    return tmp


def assistant_spans(text: str) -> list[tuple[int, int]]:
    """Where the assistant speaks, found without the template's generation markers."""
    spans, start = [], 0
    head = "<|im_start|>assistant\n"
    while (i := text.find(head, start)) >= 0:
        j = text.index("<|im_end|>", i) + len("<|im_end|>")
        spans.append((i + len(head), j))
        start = j
    return spans


def test_labels_cover_assistant_tokens_only_token_by_token(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "tok")
    sessions = [json.loads(line) for line in (built / "corpus" / "train.jsonl").read_text().splitlines()[:20]]
    examples = tokenize.encode_batch(sessions, None, "end", tok=tok)
    for s, ex in zip(sessions, examples):
        text = tok.apply_chat_template(s["messages"], tokenize=False)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        assert enc["input_ids"] == ex["input_ids"].tolist()
        spans = assistant_spans(text)
        for token, label, (a, b) in zip(ex["input_ids"], ex["labels"], enc["offset_mapping"]):
            inside = any(lo <= a < hi for lo, hi in spans)
            assert (label == token) == inside, (tok.decode([token]), a, b)


def test_the_end_of_turn_token_is_learned(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "tok")
    s = json.loads((built / "corpus" / "train.jsonl").read_text().splitlines()[0])
    [ex] = tokenize.encode_batch([s], None, "end", tok=tok)
    learned = tok.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100])
    assert learned.count("<|im_end|>") == sum(m["role"] == "assistant" for m in s["messages"])
    assert tok.eos_token == "<|im_end|>"
    last = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100][-1]
    assert last == tok.eos_token_id
    assert "<|im_start|>" not in learned and s["messages"][0]["content"] not in learned


def test_template_lives_in_the_tokenizer_and_stats_record_its_hash(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "tok")
    assert tok.chat_template == CHATML
    stats = json.loads((built / "out" / "stats.json").read_text())
    assert stats["train"]["examples"] > 50 and stats["train"]["assistant_tokens"] < stats["train"]["tokens"]
    assert len(stats["template_sha256"]) == 64


def test_truncation_policies(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "tok")
    s = json.loads((built / "corpus" / "train.jsonl").read_text().splitlines()[0])
    [cut] = tokenize.encode_batch([s], 40, "end", tok=tok)
    assert cut["truncated"] and len(cut["input_ids"]) == 40 and len(cut["labels"]) == 40
    [drop] = tokenize.encode_batch([s], 40, "drop", tok=tok)
    assert drop == {"id": s["id"], "dropped": "too_long"}


def test_the_tokenized_example_holds_no_planted_secret(built):
    import datasets
    from transformers import AutoTokenizer
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", ROOT / "examples" / "data" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    tok = AutoTokenizer.from_pretrained(built / "tok")
    text = ""
    for split in ("train", "holdout"):
        ds = datasets.load_from_disk(str(built / "out" / split))
        text += "\n".join(tok.decode(ids) for ids in ds["input_ids"])
    assert "<secret:" in text and "<pii:" in text
    for planted in gen.PLANTED:
        assert planted.split("=")[-1].split("Bearer ")[-1] not in text, planted


def test_packing_keeps_examples_whole_with_restarting_positions(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "tok")
    sessions = [json.loads(line) for line in (built / "corpus" / "train.jsonl").read_text().splitlines()[:30]]
    examples = tokenize.encode_batch(sessions, None, "end", tok=tok)
    rows = tokenize.pack(examples, 400)
    assert all(len(r["input_ids"]) <= 400 for r in rows) and len(rows) < len(examples)
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(e["input_ids"]) for e in examples)
    first = rows[0]
    assert len(first["seq_lengths"]) == first["id"].count(",") + 1
    assert sum(first["seq_lengths"]) == len(first["input_ids"])
    assert tokenize._arrow(rows).column("seq_lengths").to_pylist()[0] == first["seq_lengths"].tolist()


@pytest.mark.parametrize("template,message", [
    ("{%- for m in messages -%}{{ '<|im_start|>' + m['content'] + '<|im_end|>' }}{%- endfor -%}",
     "no {% generation %} markers"),
    ("{%- for m in messages -%}{%- generation -%}{{ m['content'] + '<|eot_id|>' }}{%- endgeneration -%}"
     "{%- endfor -%}", "does not have as a token"),
    ("{%- for m in messages -%}{{ '<|im_start|>' }}{%- generation -%}{{ m['content'] + '<|endoftext|>' }}"
     "{%- endgeneration -%}{%- endfor -%}", "but the model's EOS is `<|im_end|>`"),
])
def test_a_template_that_does_not_fit_stops_the_build_before_training(built, template, message, capsys):
    """What `formula check` says for local models, the tokenize step says for every model
    (a hub model's tokenizer is known only at build time)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "tok")
    tok.chat_template = template
    with pytest.raises(SystemExit):
        tokenize.template_problems(tokenize.Config(model="tiny"), tok)
    assert message in capsys.readouterr().err
    tok.chat_template = CHATML
    tokenize.template_problems(tokenize.Config(model="tiny"), tok)  # the named template fits

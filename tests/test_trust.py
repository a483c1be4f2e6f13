"""The trust model (docs/build.md, "What a formula is trusted with") and the limits on input
(docs/data.md): what the build promises about what it reads and runs.

- A formula is trusted like a Makefile: it may name any file, inside the project or not.
- What it reads is not: chat templates render in Jinja's immutable sandbox (`formula check`
  flags an escape, the steps that render turn one into a line naming the template's line),
  pickle weights are refused unless the model sets `allow_pickle = true` (then read once and
  stored as safetensors), transcripts are bounded per line and per session file.
"""

import ast
import json
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from formula.compiler.lower import lower
from formula.compiler.pipeline import compile_formula
from formula.contract import templates
from formula.contract.steps import (FileTemplate, NamedTemplate, OwnTokenizer, PathSource, TranscriptSource)
from formula.runtime.corpus import claude_code, loaders
from formula.runtime.corpus.sessions import LoadError

from conftest import ROOT

ESCAPE = "{%- for m in messages -%}\n{{ m.content }}\n{{ m.__init__.__globals__['os'].popen('id').read() }}\n{%- endfor -%}"
MUTATES = "{%- set _ = messages.append({'role': 'user', 'content': 'x'}) -%}\n{{ messages | length }}"
PICKY = ("{%- for m in messages -%}\n{%- if 'boom' in m['content'] -%}\n{{ raise_exception('no boom here') }}\n"
         "{%- endif -%}\n{{ m['content'] }}\n{%- endfor -%}")


# --- chat templates run in the sandbox -----------------------------------------------------------


@pytest.mark.parametrize("text,code,line", [
    (ESCAPE, "template-unsafe", 3),          # found without rendering (in whatever branch)
    (MUTATES, "template-unsafe", 1),         # refused by the immutable sandbox as it renders
    ("{% for m in messages %}\n{{ m }}", "template-syntax", 2),
    ("{{ raise_exception('needs a system turn') }}", "template-render", 1),
])
def test_render_problem_names_the_kind_and_line(text, code, line):
    problem = templates.render_problem(text)
    assert (problem.code, problem.line) == (code, line), problem


def test_the_named_templates_and_a_template_rejecting_some_chats_render():
    for text in (*templates.NAMED.values(), PICKY):
        assert templates.render_problem(text) is None


def test_an_error_from_transformers_rendering_becomes_one_located_line():
    from transformers.utils.chat_template_utils import render_jinja_template

    with pytest.raises(Exception) as exc:
        render_jinja_template([[{"role": "user", "content": "hi"}]], chat_template=MUTATES)
    assert templates.template_error(exc.value) == (
        "line 1: access to attribute 'append' of 'list' object is unsafe. (refused by Jinja's sandbox)")
    assert templates.template_error(ValueError("not from a template")) is None


def test_the_tokenize_step_names_the_session_and_line_a_template_fails_on(capsys):
    from formula.runtime.steps import tokenize

    tok = SimpleNamespace(chat_template=PICKY, special_tokens_map={})
    chats = [[{"role": "user", "content": "fine"}], [{"role": "user", "content": "boom"}]]
    with pytest.raises(templates.TemplateRenderError) as exc:
        tokenize._render(chats, tok, ["s1", "s2"])
    assert str(exc.value) == "session s2: line 3: no boom here"
    # before any session is encoded, a template the sandbox refuses fails the step in one line
    tok = SimpleNamespace(chat_template=MUTATES, get_added_vocab=lambda: {}, eos_token=None)
    with pytest.raises(SystemExit):
        tokenize.template_problems(tokenize.Config(model="base"), tok)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "line 1" in err and "sandbox refuses" in err and "Traceback" not in err


def test_the_model_step_names_the_template_file_and_line(tmp_path, capsys):
    from formula.runtime.steps import model

    path = tmp_path / "escape.jinja"
    path.write_text(ESCAPE)
    cfg = model.Config(name="base", template=FileTemplate(str(path)))
    with pytest.raises(SystemExit):
        model.chat_template(cfg, {"template": path}, None)
    err = capsys.readouterr().err.strip()
    assert err == (f"error: model `base`: {path}, line 3: the chat template does something Jinja's sandbox "
                   "refuses: it reads `__globals__` of a value: names that start with `__` lead to Python's "
                   "internals, and the sandbox refuses them")


def test_the_eval_step_turns_a_template_error_into_one_line(tmp_path, capsys, monkeypatch):
    from transformers.utils.chat_template_utils import render_jinja_template

    from formula.runtime.steps import eval as eval_step

    class Model:
        def chat(self, messages, max_new_tokens):
            render_jinja_template([messages], chat_template=PICKY)
            return "ok", True

        def close(self):
            pass

    suite = tmp_path / "suite.jsonl"
    suite.write_text(json.dumps({"prompt": "boom", "expect": "ok"}) + "\n")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    monkeypatch.setattr(eval_step, "open_model", lambda path: Model())
    ev = eval_step.Evaluator({"on": tmp_path / "m", "suite0": suite})
    with pytest.raises(SystemExit):
        ev.measure({"metric": "prompts", "model": "on", "suite": "suite0", "args": {}, "label": "prompts[m]"})
    assert capsys.readouterr().err == ("error: prompts[m]: the chat template of the model it measures "
                                       "(chat_template.jinja in the model folder) fails: line 3: no boom here\n")


def test_formula_data_shows_a_template_failure_as_one_line(tmp_path):
    import subprocess

    project = tmp_path / "p"
    (project / "data").mkdir(parents=True)
    (project / "local_model").mkdir()
    (project / "local_model" / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "added_tokens_decoder": {"0": {"content": "<|im_end|>"}}}))
    (project / "picky.jinja").write_text(PICKY.replace("{{ m['content'] }}", "{%- generation -%}{{ m['content'] "
                                                       "+ '<|im_end|>' }}{%- endgeneration -%}"))
    (project / "data" / "a.jsonl").write_text(json.dumps({"id": "a", "messages": [
        {"role": "user", "content": "boom"}, {"role": "assistant", "content": "ok"}]}) + "\n")
    (project / "f.formula").write_text(textwrap.dedent("""\
        formula f {
          description = "a template that fails on one session"
        }

        model base {
          from     = path("local_model")
          template = file("picky.jinja")
        }

        corpus sessions {
          source = transcripts("data/*.jsonl", format = chat)
        }

        stage sft {
          method = sft
          model  = base
          data   = sessions
        }
        """))
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "formula"), "data", "f.formula", "--show", "a"],
                       cwd=project, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"formula: the chat template ({project / 'picky.jinja'}) fails on a: line 3: no boom here")


# --- weights: safetensors only, unless allowed -----------------------------------------------------


@pytest.fixture(scope="module")
def pickle_model(tmp_path_factory):
    """A tiny llama made by init, its weights saved as a pickle (pytorch_model.bin)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("pickle_model")
    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "hi", "there", "[UNK]"])}
    inner = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token="[UNK]")
    tok.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    net = LlamaForCausalLM(config)
    config.save_pretrained(folder)
    torch.save(net.state_dict(), folder / "pytorch_model.bin")
    return folder, {k: v.clone() for k, v in net.state_dict().items()}


def _model_step(folder: Path, out: Path, allow_pickle: bool):
    from formula.runtime.steps import model

    cfg = model.Config(name="base", source=PathSource(str(folder)), tokenizer=OwnTokenizer(),
                       template=NamedTemplate("chatml"), allow_pickle=allow_pickle)
    out.mkdir()
    model.run(cfg, {"weights": folder}, out, out.parent / "work")


def test_pickle_weights_are_refused_unless_the_model_allows_them(pickle_model, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    folder, state = pickle_model
    with pytest.raises(SystemExit):
        _model_step(folder, tmp_path / "refused", allow_pickle=False)
    err = capsys.readouterr().err
    assert err == (f"error: model `base`: the model folder {folder} holds pickle weights only (pytorch_model.bin); "
                   "they are not loaded, since unpickling a file can run code: convert them to safetensors, or "
                   "set `allow_pickle = true` in model `base` to read them once and store them as safetensors\n")
    _model_step(folder, tmp_path / "allowed", allow_pickle=True)
    out = tmp_path / "allowed"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_pickle_files_beside_safetensors_are_left_out(pickle_model, tmp_path, capsys):
    import shutil

    folder, _ = pickle_model
    both = tmp_path / "both"
    shutil.copytree(folder, both)
    _model_step(both, tmp_path / "first", allow_pickle=True)  # makes model.safetensors
    shutil.copy(tmp_path / "first" / "model.safetensors", both)
    _model_step(both, tmp_path / "out", allow_pickle=False)
    assert not list((tmp_path / "out").glob("*.bin")) and (tmp_path / "out" / "model.safetensors").is_file()
    assert "also holds pickle weights (pytorch_model.bin); they are left out" in capsys.readouterr().out


def test_every_step_loads_weights_as_safetensors_and_never_runs_remote_code():
    """Statically: each `AutoModel*.from_pretrained` in the package passes use_safetensors=True,
    but the model step's one conversion behind `allow_pickle`; nothing passes trust_remote_code."""
    unsafe = []
    for path in (ROOT / "formula").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            if "trust_remote_code" in keywords:
                unsafe.append(f"{path.name}:{node.lineno}: trust_remote_code")
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "from_pretrained" and isinstance(f.value, ast.Name)
                    and f.value.id.startswith("AutoModel")):
                value = keywords.get("use_safetensors")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(unsafe) == 1 and unsafe[0].startswith("formula/runtime/steps/model.py:"), unsafe


# --- limits on input ---------------------------------------------------------------------------------


def _session(path: Path, events: int, pad: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines, parent = [], None
    for k in range(events):
        role = "user" if k % 2 == 0 else "assistant"
        ev = {"type": role, "uuid": f"u{k}", "parentUuid": parent, "sessionId": "s",
              "timestamp": f"2026-01-01T00:00:{k % 60:02d}Z",
              "message": {"role": role, "content": f"turn {k} " + "x" * pad}}
        if role == "assistant":
            ev["message"] = {"id": f"m{k}", "role": "assistant", "content": [{"type": "text", "text": f"turn {k}"}]}
        lines.append(json.dumps(ev))
        parent = f"u{k}"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_defaults_are_documented_and_generous():
    doc = (ROOT / "docs" / "data.md").read_text()
    assert claude_code.MAX_EVENT_BYTES == 16 << 20 and "16 MiB" in doc
    assert claude_code.MAX_SESSION_BYTES == 256 << 20 and "256 MiB" in doc
    assert claude_code.MAX_SESSION_EVENTS == 200_000 and "200,000" in doc


def test_a_session_over_its_event_limit_fails_at_the_line_or_is_skipped_whole(tmp_path):
    path = _session(tmp_path / "p" / "s.jsonl", 12)
    options = claude_code.Options(max_session_events=10)
    with pytest.raises(LoadError) as exc:
        claude_code.load([str(path)], "fail", loaders.Skipped(), options)
    assert (exc.value.line, exc.value.message) == (11, "more than 10 events in one transcript, the limit on one "
                                                       "session (`max_session_events` raises it)")
    skipped = loaders.Skipped()
    assert claude_code.load([str(path)], "skip", skipped, options) == []
    assert [(s["line"], s["file"]) for s in skipped.items] == [(11, str(path))]
    assert len(claude_code.load([str(path)], "fail", loaders.Skipped(), claude_code.Options())[0].messages) == 12


def test_a_session_file_over_its_size_limit_fails_at_the_line_that_passes_it(tmp_path):
    path = _session(tmp_path / "p" / "s.jsonl", 8, pad=1000)
    options = claude_code.Options(max_session_bytes=3000)
    with pytest.raises(LoadError) as exc:
        claude_code.load([str(path)], "fail", loaders.Skipped(), options)
    sizes = [len(line) for line in path.read_bytes().splitlines(keepends=True)]
    passes = next(n for n in range(1, len(sizes) + 1) if sum(sizes[:n]) > 3000)
    assert exc.value.line == passes > 1 and "over the 2.9 KiB limit on one session file" in exc.value.message
    assert "`max_session` raises it" in str(exc.value)
    skipped = loaders.Skipped()
    assert claude_code.load([str(path)], "skip", skipped, options) == [] and len(skipped.items) == 1


def test_a_text_file_is_one_event(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("y" * 5000)
    with pytest.raises(LoadError, match="limit on one event, which a text file is"):
        list(loaders.text_sessions(str(path), "fail", loaders.Skipped(), max_event=4096))
    skipped = loaders.Skipped()
    assert list(loaders.text_sessions(str(path), "skip", skipped, max_event=4096)) == [] and skipped.items


def test_a_formula_sets_the_limits_and_an_unset_limit_leaves_the_step_key_alone(tmp_path):
    (tmp_path / "data").mkdir()
    base = 'formula f {\n  description = "x"\n}\n\ncorpus c {\n  source = transcripts("data/*.jsonl"%s)\n}\n'
    configs = []
    for extra in ("", ", max_event = 1 MiB, max_session = 64 MiB, max_session_events = 5000"):
        (tmp_path / "f.formula").write_text(base % extra)
        result = compile_formula(str(tmp_path / "f.formula"), [])
        assert result.ok, result.diagnostics
        configs.append(lower(result.plan).steps["corpus.c"].config["sources"][0])
    assert not {"max_event", "max_session", "max_session_events"} & set(configs[0])
    assert (configs[1]["max_event"], configs[1]["max_session"], configs[1]["max_session_events"]) == \
        (1 << 20, 64 << 20, 5000)
    assert TranscriptSource(glob="x").max_session == 256 << 20


# --- a formula is trusted like a Makefile -------------------------------------------------------------


def test_a_formula_may_read_files_outside_its_project(tmp_path):
    """Documented: a formula names files as a Makefile does, inside its project or not (its
    default Claude Code source is `~/.claude/projects`); nothing confines it."""
    outside = tmp_path / "elsewhere"
    (outside / "data").mkdir(parents=True)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("")
    (project / "f.formula").write_text(
        'formula f {\n  description = "x"\n}\n\ncorpus c {\n'
        f'  source = [transcripts("../elsewhere/data/*.jsonl"), transcripts("{outside}/data/*.jsonl")]\n}}\n')
    result = compile_formula(str(project / "f.formula"), [])
    assert result.ok, result.diagnostics
    globs = [s["glob"] for s in lower(result.plan).steps["corpus.c"].config["sources"]]
    assert globs == [f"{outside}/data/*.jsonl"] * 2


def test_any_step_turns_a_template_failure_inside_a_library_into_one_line(tmp_path):
    """The step harness's fallback: a template that fails where a library renders it (trl's
    preference trainers) ends the step with one line at the template's line."""
    import subprocess
    import sys

    (tmp_path / "renders.py").write_text(textwrap.dedent(f"""\
        from formula.runtime.step import step_entry

        def run(cfg, inputs, output, work):
            from transformers.utils.chat_template_utils import render_jinja_template
            render_jinja_template([[{{"role": "user", "content": "boom"}}]], chat_template={PICKY!r})

        main = step_entry(None, run)
        if __name__ == "__main__":
            main()
        """))
    (tmp_path / "step.yaml").write_text(json.dumps({"config": {}, "inputs": {}, "output": str(tmp_path / "out"),
                                                    "work": str(tmp_path / "work")}))
    r = subprocess.run([sys.executable, "renders.py", "--config-dir", str(tmp_path), "--config-name", "step"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("error: the model's chat template failed as this step rendered "
                                                 "it: line 3: no boom here")

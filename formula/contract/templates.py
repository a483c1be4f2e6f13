"""Chat templates: the named ones, their special tokens, their digest, and what can be told about
a template before anything is built.

Each named template marks assistant output with `{% generation %}` so that training can mask
everything else, and puts the end-of-turn token inside the marked span, so the model learns to
stop. Tool calls follow one documented convention (Qwen-style): an assistant's calls are
`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, tool results are `tool` turns.

The analysis (`analyse`, `local_tokenizer`, `problems`) is text only (no Jinja rendering, no
transformers): `formula check` reads a template against a local tokenizer folder with it, and the
tokenize step reads the same template against the loaded tokenizer, so both say the same thing.
`render_problem` renders a template with sample conversations in Jinja's immutable sandbox, set
up as transformers sets it up (jinja2 is imported inside it, no transformers): `formula check`
and the model step find a template that does not parse, that the sandbox refuses (an attempt to
reach Python internals), or that fails on a plain conversation; `template_error` turns an error
raised while a step renders one into a line naming the template's line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

CHATML = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{%- if message['content'] -%}{{- message['content'] -}}{%- endif -%}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- if message['content'] or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- set args = call['function']['arguments'] -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' -}}"
    "{%- if args is string -%}{{- args -}}{%- else -%}{{- args | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

LLAMA3 = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- if message['content'] -%}{{- message['content'] -}}{%- endif -%}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set args = call['function']['arguments'] -%}"
    "{{- '{\"name\": \"' + call['function']['name'] + '\", \"parameters\": ' -}}"
    "{%- if args is string -%}{{- args -}}{%- else -%}{{- args | tojson -}}{%- endif -%}{{- '}' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endgeneration -%}"
    "{%- else -%}"
    "{{- (message['content'] or '') + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

NAMED = {"chatml": CHATML, "llama3": LLAMA3}
# Special tokens each named template needs, and which of them ends a turn (the model's EOS).
SPECIAL = {"chatml": (("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>", "<|endoftext|>"),
           "llama3": (("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                      "<|eot_id|>", "<|begin_of_text|>")}


def template_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- what a template says, read as text -------------------------------------------------------

GENERATION = re.compile(r"{%-?\s*generation\s*-?%}(.*?){%-?\s*endgeneration\s*-?%}", re.S)
SPECIAL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")


@dataclass(frozen=True)
class TemplateFacts:
    masks_assistant: bool  # has {% generation %} ... {% endgeneration %}
    special_tokens: tuple[str, ...]  # `<|...|>` tokens it writes, in order of first use
    end_of_turn: str | None  # the last special token inside the generation span


def analyse(text: str) -> TemplateFacts:
    spans = GENERATION.findall(text)
    specials = tuple(dict.fromkeys(SPECIAL_TOKEN.findall(text)))
    eot = None
    if spans:
        inside = SPECIAL_TOKEN.findall(spans[-1])
        eot = inside[-1] if inside else None
    return TemplateFacts(bool(spans), specials, eot)


@dataclass(frozen=True)
class TokenizerFacts:
    folder: str
    special_tokens: frozenset[str]  # added tokens (special or not)
    eos: str | None
    template: str | None  # the folder's own chat template


def local_tokenizer(folder: str) -> TokenizerFacts | None:
    """What a local tokenizer folder declares, from its JSON files; None when it is not there
    (the build says so with more context)."""
    config_path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(config_path):
        return None
    try:
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
        added: set[str] = {t.get("content", "") for t in config.get("added_tokens_decoder", {}).values()}
        tj = os.path.join(folder, "tokenizer.json")
        if os.path.isfile(tj):
            with open(tj, encoding="utf-8") as fh:
                added |= {t["content"] for t in json.load(fh).get("added_tokens", [])}
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    template = config.get("chat_template")
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as fh:
            template = fh.read()
    return TokenizerFacts(folder, frozenset(added), eos, template if isinstance(template, str) else None)


def problems(facts: TemplateFacts, tok: TokenizerFacts | None, needs_masking: bool) -> list[tuple[str, str, str]]:
    """(code, message, help) for each way the template and tokenizer do not fit together."""
    out = []
    if needs_masking and not facts.masks_assistant:
        out.append(("template-no-generation",
                    "the chat template has no {% generation %} markers, so assistant turns cannot be masked",
                    "wrap what the assistant writes, end-of-turn token included, in "
                    "{% generation %}...{% endgeneration %}; or set `assistant_only = false` in its stages"))
    if tok is not None:
        missing = [t for t in facts.special_tokens if t not in tok.special_tokens]
        if missing:
            out.append(("template-tokens",
                        f"the chat template writes {', '.join(f'`{t}`' for t in missing)}, which the "
                        f"tokenizer of {shown(tok.folder)} does not have as a token",
                        "they would be split into pieces; use a template written for this tokenizer"))
        if facts.end_of_turn and tok.eos and facts.end_of_turn != tok.eos:
            out.append(("template-eos",
                        f"an assistant turn ends with `{facts.end_of_turn}`, but the model's EOS is `{tok.eos}`",
                        "generation would not stop at the end of a turn; end assistant turns with the "
                        "EOS token or make the end-of-turn token the EOS"))
    return out


def shown(path: str) -> str:
    """A path as the user would write it: relative to where they are, when under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# --- what a template does, rendered in Jinja's sandbox ------------------------------------------

TEMPLATE_NAME = "<template>"  # the file name Jinja gives a template made from a string
_CALL = {"id": "call_1", "type": "function", "function": {"name": "bash", "arguments": {"command": "ls"}}}
# (conversation, add_generation_prompt): the plainest chat first (any error on it is the template's),
# then one with every kind of turn a corpus makes (only the sandbox's refusals count on it: a
# template may reject tool turns or a system prompt on purpose, with `raise_exception`).
SAMPLES: tuple[tuple[tuple[dict, ...], bool], ...] = (
    (({"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."}), False),
    (({"role": "system", "content": "You are a helpful agent."},
      {"role": "user", "content": "List the files."},
      {"role": "assistant", "content": "Listing.", "reasoning_content": "Use bash.", "tool_calls": [_CALL]},
      {"role": "tool", "tool_call_id": "call_1", "name": "bash", "content": "README.md"},
      {"role": "assistant", "content": "There is README.md."},
      {"role": "user", "content": "Thanks."}), True),
)
SAMPLE_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class RenderProblem:
    code: str  # template-syntax, template-unsafe, template-render
    line: int | None  # in the template, 1-based, where Jinja knows it
    message: str  # what Jinja said, as one line

    def describe(self) -> str:
        what = {"template-syntax": "does not parse",
                "template-unsafe": "does something Jinja's sandbox refuses",
                "template-render": "fails on a plain user/assistant conversation"}[self.code]
        return f"{what}: {self.message}"


class TemplateRenderError(Exception):
    """A chat template failed while a step rendered it: one line for the user, already located
    (picklable, so a worker process can raise it)."""


def _environment():
    """The sandbox transformers renders chat templates in: immutable, `trim_blocks` and
    `lstrip_blocks`, loop controls, `{% generation %}`, and the same globals and `tojson`."""
    import datetime

    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):  # no underscore attributes, as in transformers
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with `_` ({name!r})")

    class TemplateDict:  # `dict(...)` without handing the template the type itself
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace, dict=TemplateDict(),
                       strftime_now=lambda fmt: datetime.datetime(2026, 1, 1).strftime(fmt))
    return env


def render_problem(text: str) -> RenderProblem | None:
    """What goes wrong when the template renders the sample conversations, if anything."""
    import jinja2

    try:
        compiled = _environment().from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        return RenderProblem("template-syntax", exc.lineno, _one_line(exc.message or str(exc)))
    found = _private_access(compiled.environment, text)
    if found:
        return found
    for k, (chat, prompt) in enumerate(SAMPLES):
        try:
            compiled.render(messages=[dict(m) for m in chat], add_generation_prompt=prompt, tools=None,
                            **SAMPLE_TOKENS)
        except jinja2.exceptions.SecurityError as exc:
            return RenderProblem("template-unsafe", template_line(exc), _one_line(str(exc)))
        except Exception as exc:  # the template's own code failed: any exception Jinja lets through
            if k == 0:
                return RenderProblem("template-render", template_line(exc), _one_line(_message(exc)))
    return None


def _private_access(env, text: str) -> RenderProblem | None:
    """The first `x.__name`, `x["__name"]` or `x|attr("__name")` in the template, rendered or
    not: the sandbox refuses such attributes, and a template reaching for one is reaching for
    Python's internals (a sandbox escape), whichever branch it hides in."""
    from jinja2 import nodes

    def private(n) -> bool:
        return isinstance(n, nodes.Const) and isinstance(n.value, str) and n.value.startswith("__")

    tree = env.parse(text)
    found = [(n.lineno, n.attr) for n in tree.find_all(nodes.Getattr) if n.attr.startswith("__")]
    found += [(n.lineno, n.arg.value) for n in tree.find_all(nodes.Getitem) if private(n.arg)]
    found += [(n.lineno, n.args[0].value) for n in tree.find_all(nodes.Filter)
              if n.name == "attr" and n.args and private(n.args[0])]
    if not found:
        return None
    line, name = min(found)
    return RenderProblem("template-unsafe", line, f"it reads `{name}` of a value: names that start with `__` "
                         "lead to Python's internals, and the sandbox refuses them")


def template_line(exc: BaseException) -> int | None:
    """The template line an exception raised while rendering came from (Jinja rewrites the
    traceback so that the template's frames carry its line numbers)."""
    line = getattr(exc, "lineno", None) if type(exc).__module__.startswith("jinja2") else None
    if isinstance(line, int):
        return line
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == TEMPLATE_NAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def template_error(exc: BaseException) -> str | None:
    """An exception raised while rendering a chat template as one line (`line N: what`), or
    None when it did not come from the template (a bug elsewhere keeps its traceback)."""
    kinds = {c.__module__ + "." + c.__name__ for c in type(exc).__mro__}
    line = template_line(exc)
    if "jinja2.exceptions.TemplateError" not in kinds and line is None:
        return None
    refused = " (refused by Jinja's sandbox)" if "jinja2.exceptions.SecurityError" in kinds else ""
    return (f"line {line}: " if line else "") + _one_line(_message(exc)) + refused


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__module__.startswith("jinja2") else f"{type(exc).__name__}: {text}"


def _one_line(text: str) -> str:
    return " ".join(text.split())

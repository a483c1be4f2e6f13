"""Chat templates: the named ones, their special tokens, their digest, and what can be told about
a template before anything is built.

Each named template marks assistant output with `{% generation %}` so that training can mask
everything else, and puts the end-of-turn token inside the marked span, so the model learns to
stop. Tool calls follow one documented convention (Qwen-style): an assistant's calls are
`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, tool results are `tool` turns.

The analysis (`analyse`, `local_tokenizer`, `problems`) is text only (no Jinja rendering, no
transformers): `formula check` reads a template against a local tokenizer folder with it, and the
tokenize step reads the same template against the loaded tokenizer, so both say the same thing.
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

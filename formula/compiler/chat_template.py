"""What `formula check` can tell about a chat template before anything is built: whether it can
mask assistant turns, which special tokens it writes, and which token ends an assistant turn;
and what a local tokenizer folder offers to match. Text analysis only (no Jinja rendering, no
transformers), so checking stays fast."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

GENERATION = re.compile(r"{%-?\s*generation\s*-?%}(.*?){%-?\s*endgeneration\s*-?%}", re.S)
SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>")


@dataclass(frozen=True)
class TemplateFacts:
    masks_assistant: bool  # has {% generation %} ... {% endgeneration %}
    special_tokens: tuple[str, ...]  # `<|...|>` tokens it writes, in order of first use
    end_of_turn: str | None  # the last special token inside the generation span


def analyse(text: str) -> TemplateFacts:
    spans = GENERATION.findall(text)
    specials = tuple(dict.fromkeys(SPECIAL.findall(text)))
    eot = None
    if spans:
        inside = SPECIAL.findall(spans[-1])
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

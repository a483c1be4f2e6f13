"""llama.cpp sessions as the evals and parity tests need them: an f32 KV cache (llama.cpp's
default f16 cache alone moves logits by ~4e-3), quiet, every core."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def open_gguf(path: Path, n_ctx: int = 2048, logits_all: bool = False, vocab_only: bool = False):
    """A llama.cpp model, closed on exit (its finaliser fails at interpreter shutdown)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx or 512, 512), logits_all=logits_all,
                 vocab_only=vocab_only, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False,
                 n_threads=os.cpu_count() or 1, seed=0)
    try:
        yield llm
    finally:
        llm.close()


def logits(llm, ids: list[int]):
    """Logits at every position of `ids` (numpy, len(ids) × vocab), from a fresh context."""
    llm.reset()
    llm.eval(ids)
    return llm.scores[: len(ids)].copy()


def metadata(path: Path) -> dict[str, object]:
    """The GGUF's key-value metadata, strings decoded (no tensors are read)."""
    import gguf

    reader = gguf.GGUFReader(path)
    out: dict[str, object] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = field.contents()
        except Exception:  # noqa: BLE001 - an exotic field type is not worth failing over
            continue
    return out


def tensor_types(path: Path) -> dict[str, int]:
    import gguf

    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


class ChatRenderer:
    """A GGUF's own chat template (`tokenizer.chat_template`), rendered and tokenized the way
    llama-cpp-python's chat completion does (its Jinja2ChatFormatter, `{% generation %}` passed
    through, special tokens parsed, BOS added unless the template wrote it)."""

    def __init__(self, llm):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the GGUF has no tokenizer.chat_template")
        eos, bos = llm.token_eos(), llm.token_bos()
        eos_text = llm._model.token_get_text(eos) if eos != -1 else ""
        bos_text = llm._model.token_get_text(bos) if bos != -1 else ""
        self.llm = llm
        self.prompt = Jinja2ChatFormatter(template, eos_text, bos_text, add_generation_prompt=True)
        self.whole = Jinja2ChatFormatter(template, eos_text, bos_text, add_generation_prompt=False)

    def ids(self, messages: list[dict], generation_prompt: bool = True) -> list[int]:
        r = (self.prompt if generation_prompt else self.whole)(messages=messages)
        return self.llm.tokenize(r.prompt.encode("utf-8"), add_bos=not r.added_special, special=True)


SMALL_MODEL = 30_000_000  # parameters below which one thread decodes faster than several
KV_BUDGET = 2 << 30  # bytes of KV cache (f32) the batched generator may take for all its slots


def kv_bytes_per_token(llm) -> int:
    import llama_cpp

    m = llm._model.model
    head = llama_cpp.llama_model_n_embd(m) // max(1, llama_cpp.llama_model_n_head(m))
    return 2 * 4 * llama_cpp.llama_model_n_layer(m) * llama_cpp.llama_model_n_head_kv(m) * head


def threads_for(llm) -> int:
    """Threads for decoding: every core, but one for a model so small that handing a token's
    work to a second thread costs more than it saves (the example's 1.6M-parameter llama: 200
    turns in 2.1 s on one thread, 3.0 s on two). Threads wait passively between graphs
    (`OMP_WAIT_POLICY=PASSIVE`, set by the eval step): spinning OpenMP threads on a machine
    busy with other work made the same run take 21.6 s."""
    import llama_cpp

    if llama_cpp.llama_model_n_params(llm._model.model) < SMALL_MODEL:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class BatchedGenerator:
    """Greedy generation of many prompts at once in one llama.cpp context: `slots` sequences
    decoded together (one `llama_decode` per step carries a token of every sequence, prompts
    chunked in), each sequence keeping its KV cache from one prompt to the next, so consecutive
    prompts that share a prefix (the turns of one session) evaluate only what is new.

    `run(groups)`: groups of (prompt ids, budget), the prompts of a group in order on one slot;
    returns, per prompt, (generated ids, ended with an end-of-generation token)."""

    def __init__(self, llm, slots: int = 8, n_ctx: int | None = None, n_batch: int = 1024):
        import llama_cpp

        self.lib, self.llm = llama_cpp, llm
        self.slots = slots
        self.per_slot = int(n_ctx or llm._model.n_ctx_train())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.per_slot * slots
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = slots
        params.kv_unified = False  # a cache per sequence: the slots' conversations share nothing
        params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
        params.n_threads = params.n_threads_batch = threads_for(llm)
        params.no_perf = True
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as open_gguf's contexts
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if self.ctx is None:
            raise RuntimeError("llama.cpp could not make a context for batched generation")
        self.per_slot = llama_cpp.llama_n_ctx(self.ctx) // slots
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.eog = {t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)}
        self.n_batch = n_batch
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.stats = {"prompt_tokens": 0, "evaluated_tokens": 0, "reused_tokens": 0,
                      "generated_tokens": 0, "decode_calls": 0}

    def close(self) -> None:
        if self.ctx is not None:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None

    def _argmax(self, rows: int) -> list[int]:
        """The most likely next token of each output of the last decode (greedy)."""
        import numpy as np

        logits = np.ctypeslib.as_array(self.lib.llama_get_logits(self.ctx), shape=(rows, self.n_vocab))
        return logits.argmax(axis=1).tolist()

    def run(self, groups: list[list[tuple[list[int], int]]]) -> list[list[tuple[list[int], bool]]]:
        lib = self.lib
        results: list[list[tuple[list[int], bool]]] = [[] for _ in groups]
        queue = [g for g in range(len(groups)) if groups[g]][::-1]
        slots = [_Slot(seq) for seq in range(self.slots)]

        def start(slot: _Slot) -> bool:
            """The slot's next prompt (its group's, or a new group's); False when none is left."""
            if slot.group < 0 or slot.next >= len(groups[slot.group]):
                if not queue:
                    return False
                slot.group, slot.next = queue.pop(), 0
            ids, budget = groups[slot.group][slot.next]
            slot.budget = budget = max(1, min(budget, self.per_slot - 1))
            ids = ids[-(self.per_slot - budget):]  # the end of an over-long conversation
            keep = 0
            for a, b in zip(slot.cached, ids):
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(ids) - 1)  # the last prompt token is decoded again for its logits
            lib.llama_memory_seq_rm(self.mem, slot.seq, keep, -1)
            slot.cached, slot.pending, slot.generated = ids[:keep], ids[keep:], []
            self.stats["prompt_tokens"] += len(ids)
            self.stats["reused_tokens"] += keep
            return True

        active = [s for s in slots if start(s)]
        batch = self.batch
        while active:
            n = 0
            wants: list[_Slot] = []  # the slots whose logits this decode gives, in batch order

            def add(slot: _Slot, tok: int, logits: bool) -> None:
                nonlocal n
                batch.token[n], batch.pos[n] = tok, len(slot.cached)
                batch.seq_id[n][0], batch.n_seq_id[n], batch.logits[n] = slot.seq, 1, logits
                slot.cached.append(tok)
                n += 1

            for slot in active:  # generating slots first: their last token each
                if not slot.pending and slot.generated:
                    add(slot, slot.generated[-1], True)
                    wants.append(slot)
            for slot in active:  # then prompt tokens, as many as fit
                if not slot.pending or n >= self.n_batch:
                    continue
                take, slot.pending = slot.pending[: self.n_batch - n], slot.pending[self.n_batch - n:]
                for tok in take:
                    add(slot, tok, False)
                if not slot.pending:
                    batch.logits[n - 1] = True
                    wants.append(slot)
            batch.n_tokens = n
            self.stats["evaluated_tokens"] += n
            self.stats["decode_calls"] += 1
            rc = lib.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc})")
            for slot, tok in zip(wants, self._argmax(len(wants))):
                slot.generated.append(tok)
                eog = tok in self.eog
                if eog or len(slot.generated) >= slot.budget:
                    self.stats["generated_tokens"] += len(slot.generated)
                    results[slot.group].append((slot.generated[:-1] if eog else slot.generated, eog))
                    slot.next += 1
                    if not start(slot):
                        active.remove(slot)
        return results


class _Slot:
    """One sequence of the batched generator: the group it works through, the ids whose KV it
    holds, the prompt ids still to decode, what it generated for the current prompt."""

    def __init__(self, seq: int):
        self.seq, self.group, self.next, self.budget = seq, -1, 0, 0
        self.cached: list[int] = []
        self.pending: list[int] = []
        self.generated: list[int] = []


def next_actions(llm, turns: list, max_new_tokens: int, slots: int = 8) -> tuple[list, dict]:
    """Greedy answers to every turn's conversation so far (nextaction.Turn), through the GGUF's
    own template: the turns of one session go to one slot in order, so each prompt evaluates
    only what follows the previous one; `slots` sessions are decoded together."""
    from formula.runtime.nextaction import budget

    render = ChatRenderer(llm)
    groups: list[list[tuple[list[int], int]]] = []
    where: list[tuple[int, int]] = []  # turn -> (group, position)
    last = None
    need = 0
    for t in turns:
        ids = render.ids(t.prompt)
        whole = render.ids(t.prompt + [t.reference], generation_prompt=False)
        b = budget(max(1, len(whole) - len(ids)), max_new_tokens)
        if t.session != last:
            groups.append([])
            last = t.session
        where.append((len(groups) - 1, len(groups[-1])))
        groups[-1].append((ids, b))
        need = max(need, len(ids) + b)
    train_ctx = llm._model.n_ctx_train()
    per_slot = min(train_ctx, -(-need // 256) * 256) if train_ctx > 0 else -(-need // 256) * 256
    # as many slots as asked for, as there are sessions, and as the KV budget holds
    slots = max(1, min(slots, len(groups), KV_BUDGET // (per_slot * kv_bytes_per_token(llm))))
    gen = BatchedGenerator(llm, slots=slots, n_ctx=per_slot)
    try:
        done = gen.run(groups)
    finally:
        gen.close()
    out = []
    for g, i in where:
        ids, ended = done[g][i]
        out.append((llm.detokenize(ids).decode("utf-8", errors="replace"), ended))
    return out, {**gen.stats, "slots": gen.slots}

"""llama.cpp context handling for models/llm.py: the KV cache of one context (`LlamaContext`), a multi-sequence
context for scoring every candidate of a trie in one batched decode (`SequencesContext`), and the primed prompt
prefix that is evaluated once and kept (`Primed`). Split from the predictor so each file has one job: this one
talks to llama.cpp's low-level API; models/llm.py decides what to decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class LlamaContext:
    """The `Llama` object's own context, driven through `Llama.eval` so `create_completion` sees a consistent
    state (`n_tokens`, `input_ids`)."""

    def __init__(self, llm: Any):
        self.llm = llm

    @property
    def position(self) -> int:
        return int(self.llm.n_tokens)

    @property
    def capacity(self) -> int:
        return int(self.llm.n_ctx())

    def truncate(self, position: int) -> None:
        self.llm.n_tokens = position  # `eval` drops the KV cache from here before decoding

    def decode(self, tokens: Sequence[int]) -> None:
        if tokens:
            self.llm.eval(list(tokens))

    def last_logits(self) -> np.ndarray:
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.llm.n_vocab(),))

    def close(self) -> None:
        pass


class SequencesContext:
    """A second context on the same weights with one sequence per candidate and a unified KV cache, so that
    candidates share the prompt's cells (sequence 0) and their common token prefixes."""

    def __init__(self, llm: Any, n_ctx: int, n_batch: int, n_seq: int, n_threads: int):
        import llama_cpp
        from llama_cpp import _internals

        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_seq_max, params.kv_unified = n_seq, True
        params.n_threads = params.n_threads_batch = n_threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        self._llama_cpp = llama_cpp
        self.n_vocab, self.n_batch, self.n_seq, self.capacity = llm.n_vocab(), n_batch, n_seq, n_ctx
        self._context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, n_seq)
        self.position = 0
        self._last_outputs = 0

    @property
    def _ctx(self) -> Any:
        return self._context.ctx

    def _memory(self) -> Any:
        return self._llama_cpp.llama_get_memory(self._ctx)

    def truncate(self, position: int) -> None:
        self._llama_cpp.llama_memory_seq_rm(self._memory(), -1, position, -1)
        self.position = position

    def decode(self, tokens: Sequence[int]) -> None:
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start:start + self.n_batch]
            self._fill([(int(t), self.position + i, (0,), i == len(part) - 1) for i, t in enumerate(part)])
            self.position += len(part)

    def last_logits(self) -> np.ndarray:
        pointer = self._llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def decode_trie(self, nodes: Sequence[Any], n_candidates: int):
        """Evaluate every trie node once, in the sequences of the candidates below it (candidate k is sequence
        k + 1, sharing the prompt's cells through `seq_cp`); yields (nodes, their logits) chunk by chunk. Parents
        come before children, so a chunk's nodes only attend to cells already in the cache or in the chunk."""
        memory, prompt_end = self._memory(), self.position
        for k in range(n_candidates):
            self._llama_cpp.llama_memory_seq_cp(memory, 0, k + 1, -1, -1)
        try:
            for start in range(0, len(nodes), self.n_batch):
                chunk = nodes[start:start + self.n_batch]
                self._fill([(node.token, prompt_end + node.depth - 1, tuple(k + 1 for k in node.candidates), True)
                            for node in chunk])
                pointer = self._llama_cpp.llama_get_logits(self._ctx)
                yield chunk, np.ctypeslib.as_array(pointer, shape=(len(chunk), self.n_vocab))
        finally:
            for k in range(n_candidates):
                self._llama_cpp.llama_memory_seq_rm(memory, k + 1, -1, -1)
            self.truncate(prompt_end)

    def _fill(self, entries: list[tuple[int, int, tuple[int, ...], bool]]) -> None:
        batch = self._batch
        batch.n_tokens = len(entries)
        for i, (token, position, sequences, wants_logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, position, len(sequences), \
                wants_logits
            row = batch.seq_id[i]
            for j, sequence in enumerate(sequences):
                row[j] = sequence
        code = self._llama_cpp.llama_decode(self._ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")

    def close(self) -> None:
        if self._batch is not None:
            self._llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        self._context.close()

    def __del__(self) -> None:
        self.close()


class Primed:
    """Keeps a context's KV cache at a chain of checkpoints: the static segment, the trending segment, the request
    head (the older cluster's line). Each level is always evaluated as one batch starting at the same position, and
    everything after the last checkpoint is dropped before the rest of a request is evaluated, so the logits a
    request sees do not depend on earlier requests; a level that changes is re-evaluated with every level after
    it. Consecutive requests that share the older cluster (a bulk build walks the pairs grouped that way) evaluate
    only their rest."""

    def __init__(self, context: Any):
        self.context = context
        self._levels: list[list[int]] = []

    def invalidate(self) -> None:
        self._levels = []

    def ensure(self, levels: list[list[int]], reserve: int = 0) -> None:
        needed = sum(map(len, levels)) + reserve
        if needed > self.context.capacity:
            raise ValueError(f"prompt and answer need {needed} tokens, over the context window of "
                             f"{self.context.capacity}")
        position = 0
        for depth, tokens in enumerate(levels):
            cached = self._levels[depth] if depth < len(self._levels) else None
            if cached != tokens or self.context.position < position + len(tokens):
                del self._levels[depth:]
                self.context.truncate(position)
                self.context.decode(tokens)
                self._levels.append(tokens)
            position += len(tokens)
        del self._levels[len(levels):]
        self.context.truncate(position)

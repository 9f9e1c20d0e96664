"""Quality gates a fine-tuned model must pass before release, and the held-out evaluation behind them.

Evaluation: for each held-out pair (a seeded sample of the time-later test period, curation.py) the model answers
two prompts, the server's prompt with the knowledge the store held at the split and the same prompt without
knowledge, by FREE greedy generation in llama.cpp (argmax over the whole vocabulary, no grammar, until an
end-of-generation token). Metrics per prompt mode:

* exact_match   -- share of answers that are exactly the name of a valid novel cluster (a cluster of the set, not
                   one of the two in the prompt's history);
* hit_rate      -- held-out recall@1: test-period transitions (c1, c2) -> c3 whose c3 is the model's answer for
                   (c1, c2), over all test transitions of the evaluated pairs (an invalid answer is a miss);
* pair_hit_rate -- share of pairs whose answer is among the pair's test-period next clusters.

`served_hit_rate` measures the same recall with the server's own answer (the argmax of the scored distribution a
pair-table row holds under ``novel_choice`` "llm-x-sequence", else the constrained decoding, models/llm.py "trie"),
which always names a valid cluster, so it shows what serving gains whatever the free-generation exact match.
Scored, the same pass gives the distributions the model's temperature is fitted on at release (`served_answers`).

Gates (settings): exact_match with knowledge >= finetune_gate_exact_match, hit_rate with knowledge >=
finetune_gate_min_hit_rate -- both on the server's prompts: the server only ever asks with the knowledge it
retrieved (models/pair_table.py, for table rows and request-time misses alike), so a gate on prompts it never
builds would hold back a model on answers no user gets (the plain figures stay in the metrics: they are the
evaluation's fine-tune-only strategy's, and the release metadata keeps them), and the agreement of the quantized llama.cpp model's greedy answers with the PyTorch
model's on a sample of finetune_agreement_prompts >= finetune_gate_min_agreement, where an answer that differs only
by a near-tie (the token llama.cpp chose within finetune_agreement_margin_nats of the PyTorch model's best where
the two first differ) still agrees: it catches a broken export or a too-coarse quantization, not the flip of a tie
that quantization noise decides. And one
relative gate: the candidate's served hit rate >= the serving model's (the released fine-tune, else the base) on
the same held-out pairs, so no release serves users worse answers than they get now; the gate report shows count
argmax on those pairs beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.calibration import Observed
from models.clusters import ClusterSet
from models.finetune.curation import HeldOutPair
from models.finetune.training import PromptTokenizer
from models.prompts import Knowledge, prompt_segments
from streams.settings import Settings

MODES = ("knowledge", "plain")
N_CTX = 1024
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EvalPrompt:
    pair: HeldOutPair
    mode: str

    @property
    def knowledge(self) -> Knowledge | None:
        return self.pair.knowledge if self.mode == "knowledge" else None


def eval_prompts(held_out: Sequence[HeldOutPair]) -> list[EvalPrompt]:
    return [EvalPrompt(pair, mode) for mode in MODES for pair in held_out]


def prompt_tokens(prompt: EvalPrompt, clusters: ClusterSet, tokenizer: PromptTokenizer) -> tuple[list[int], list[int]]:
    return tokenizer.prompt(prompt_segments(prompt.pair.history, prompt.knowledge, clusters))


class GreedyGenerator:
    """Free greedy generation with llama.cpp; the static prompt segment stays evaluated between prompts."""

    def __init__(self, gguf_path: str | Path, threads: int):
        from llama_cpp import Llama

        from models.llama_output import route_llama_output

        route_llama_output()
        self._llm = Llama(model_path=str(gguf_path), n_ctx=N_CTX, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, seed=0, verbose=False)
        import llama_cpp

        vocab = self._llm._model.vocab
        self._eog = {t for t in range(self._llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        self._static: list[int] = []

    def answer(self, static: Sequence[int], rest: Sequence[int], max_new_tokens: int) -> list[int]:
        import llama_cpp

        if list(static) != self._static:
            self._llm.n_tokens = 0
            self._llm.eval(list(static))
            self._static = list(static)
        self._llm.n_tokens = len(self._static)  # `eval` drops the cache after this position before decoding
        self._llm.eval(list(rest))
        out: list[int] = []
        for _ in range(max_new_tokens):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._llm.ctx, -1),
                                           shape=(self._llm.n_vocab(),))
            token = int(np.argmax(logits))
            if token in self._eog:
                break
            out.append(token)
            self._llm.eval([token])
        return out

    def close(self) -> None:
        self._llm.close()


@dataclass
class Evaluation:
    prompts: list[EvalPrompt]
    answers: list[str]
    tokens: list[list[int]]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def evaluate(gguf_path: str | Path, held_out: Sequence[HeldOutPair], clusters: ClusterSet,
             tokenizer: PromptTokenizer, threads: int, progress: Progress | None = None) -> Evaluation:
    prompts = eval_prompts(held_out)
    max_new = max(len(tokenizer.tokenize(c.name)) for c in clusters.clusters.values()) + 4
    generator = GreedyGenerator(gguf_path, threads)
    answers, tokens = [], []
    try:
        for index, prompt in enumerate(prompts):
            answer = generator.answer(*prompt_tokens(prompt, clusters, tokenizer), max_new)
            tokens.append(answer)
            answers.append(tokenizer.detokenize(answer))
            if progress is not None:
                progress(index + 1, len(prompts))
    finally:
        generator.close()
    return Evaluation(prompts, answers, tokens, score(prompts, answers, clusters))


def score(prompts: Sequence[EvalPrompt], answers: Sequence[str], clusters: ClusterSet) -> dict[str, dict[str, float]]:
    by_name = {c.name: cid for cid, c in clusters.clusters.items()}
    out: dict[str, dict[str, float]] = {}
    for mode in (*MODES, "all"):
        chosen = [(p, a) for p, a in zip(prompts, answers, strict=True) if mode in ("all", p.mode)]
        if not chosen:
            continue
        valid = hits = total = pair_hits = 0
        for prompt, answer in chosen:
            cid = by_name.get(answer)
            novel = cid is not None and cid not in prompt.pair.history
            valid += novel
            total += prompt.pair.total
            if novel:
                hits += prompt.pair.next_counts.get(cid, 0)
                pair_hits += cid in prompt.pair.next_counts
        out[mode] = {"prompts": len(chosen), "exact_match": round(valid / len(chosen), 4),
                     "hit_rate": round(hits / max(1, total), 4), "pair_hit_rate": round(pair_hits / len(chosen), 4)}
    return out


def baselines(held_out: Sequence[HeldOutPair], popular: Sequence[str]) -> dict[str, float]:
    """Held-out recall@1 of two non-LLM answers: the pair's top retrieved next cluster, the most popular one."""
    total = sum(p.total for p in held_out) or 1
    top = sum(p.next_counts.get(p.knowledge.top_next[0][0], 0) for p in held_out if p.knowledge.top_next)
    pop = sum(p.next_counts.get(next((c for c in popular if c not in p.history), ""), 0) for p in held_out)
    return {"knowledge_top1_hit_rate": round(top / total, 4), "popular_hit_rate": round(pop / total, 4)}


@dataclass(frozen=True)
class ServedAnswers:
    hit_rate: float  # held-out recall@1 of the served criterion
    observed: list[Observed]  # each pair's candidate log-probabilities and next clusters (scored serving only)


def served_answers(gguf_path: str | Path, held_out: Sequence[HeldOutPair], clusters: ClusterSet,
                   settings: Settings, progress: Progress | None = None) -> ServedAnswers:
    """Recall@1 with the server's own answer and knowledge: with ``novel_choice`` "llm-x-sequence" the argmax of
    the scored distribution a pair-table row holds (models/pair_table.infer; the per-user sequence factor needs a
    user, which held-out pairs have not), else the constrained decoding (models/llm.py, default method). Scored,
    each pair's distribution is kept too: the model's calibration is fitted on them (models/calibration.py)."""
    from models.llm import NovelClusterPredictor
    from models.pair_table import infer

    predictor = NovelClusterPredictor(settings, clusters, model_path=str(gguf_path),
                                      n_threads=settings.finetune_threads, announce_base=False)
    hits, observed = 0, []
    try:
        for index, pair in enumerate(held_out):
            # the row the server would store for this pair and knowledge: its answer, and its scores when scored
            row = infer(predictor, pair.history, pair.knowledge.top_next, pair.knowledge.trending, "",
                        scored=settings.scored_pairs)
            if row.scores:
                observed.append(Observed(dict(row.scores), dict(pair.next_counts)))
            hits += pair.next_counts.get(row.novel, 0)
            if progress is not None:
                progress(index + 1, len(held_out))
    finally:
        predictor.close()
    return ServedAnswers(round(hits / max(1, sum(p.total for p in held_out)), 4), observed)


def served_hit_rate(gguf_path: str | Path, held_out: Sequence[HeldOutPair], clusters: ClusterSet,
                    settings: Settings, progress: Progress | None = None) -> float:
    """`served_answers`' recall@1 alone."""
    return served_answers(gguf_path, held_out, clusters, settings, progress).hit_rate


def agreement(reference: Sequence[Sequence[int]], candidate: Sequence[Sequence[int]]) -> float:
    """Share of prompts where both models generate exactly the same answer tokens."""
    if len(reference) != len(candidate) or not reference:
        raise ValueError("agreement needs two equally long, non-empty lists of answers")
    return round(sum(list(a) == list(b) for a, b in zip(reference, candidate)) / len(reference), 4)


@dataclass(frozen=True)
class ExportCheck:
    """The quantized llama.cpp model's greedy answers against the PyTorch model's, on the same prompts.

    `gaps`: per prompt, None where both answers are the same tokens, else how many nats below its best the PyTorch
    model ranks the token llama.cpp chose where the answers first differ (training.torch_divergence_gap). A prompt
    agrees when the answers are the same or the gap is within `margin_nats`: a near-tie that quantization flipped is
    not a broken export, while an export that lost the fine-tune (or a too-coarse quantization) picks tokens the
    trained model ranks far below its best."""
    gaps: tuple[float | None, ...]
    margin_nats: float

    def __post_init__(self) -> None:
        if not self.gaps:
            raise ValueError("the export check needs at least one prompt")

    @property
    def agreement(self) -> float:
        """The gated share: prompts whose llama.cpp answer is the PyTorch answer or within the margin of it."""
        return round(sum(g is None or g <= self.margin_nats for g in self.gaps) / len(self.gaps), 4)

    @property
    def exact_agreement(self) -> float:
        return round(sum(g is None for g in self.gaps) / len(self.gaps), 4)

    def as_dict(self) -> dict[str, Any]:
        differing = sorted((g for g in self.gaps if g is not None), reverse=True)
        return {"prompts": len(self.gaps), "agreement": self.agreement, "exact_agreement": self.exact_agreement,
                "margin_nats": self.margin_nats, "differing_gaps_nats": [round(g, 3) for g in differing]}


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold

    def reason(self) -> str:
        return f"{self.name} {self.value:.3f} {'>=' if self.passed else '<'} {self.threshold:.3f}"


@dataclass(frozen=True)
class GateResult:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        """Why the model failed (empty when it passed)."""
        return [c.reason() for c in self.checks if not c.passed]

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons,
                "checks": [{"name": c.name, "value": c.value, "threshold": c.threshold, "passed": c.passed}
                           for c in self.checks]}


def check_gates(metrics: dict[str, dict[str, float]], export_agreement: float, settings: Settings,
                served: float | None = None, serving_served: float | None = None) -> GateResult:
    """The absolute gates, and -- given the candidate's served hit rate and the serving model's on the same
    held-out pairs -- the relative one: no release may serve users worse answers than they get now."""
    checks = [
        Check("exact_match", metrics["knowledge"]["exact_match"], settings.finetune_gate_exact_match),
        Check("hit_rate", metrics["knowledge"]["hit_rate"], settings.finetune_gate_min_hit_rate),
        Check("export_agreement", export_agreement, settings.finetune_gate_min_agreement),
    ]
    if (served is None) != (serving_served is None):
        raise ValueError("the relative gate needs both served hit rates, the candidate's and the serving model's")
    if served is not None and serving_served is not None:
        checks.append(Check("served_hit_rate_vs_serving", served, serving_served))
    return GateResult(tuple(checks))


def gate_report(result: GateResult, *, pairs: int, served: float | None, serving_model: str,
                serving_served: float | None, count_argmax: float, metrics: dict[str, dict[str, float]],
                export_agreement: float) -> dict[str, Any]:
    """What a release decision rests on, in one place (metadata, `explorer finetune`, the demo's summary): the
    candidate's and the serving model's served hit rate on the same held-out pairs, count argmax on them too (the
    LLM-free answer the fallback gives), and the absolute gates."""
    return {"passed": result.passed, "reasons": result.reasons, "held_out_pairs": pairs,
            "served_hit_rate": served, "serving_model": serving_model, "serving_served_hit_rate": serving_served,
            "count_argmax_hit_rate": count_argmax, "exact_match": metrics["knowledge"]["exact_match"],
            "exact_match_without_knowledge": metrics.get("plain", {}).get("exact_match"),
            "hit_rate": metrics["knowledge"]["hit_rate"], "export_agreement": export_agreement}

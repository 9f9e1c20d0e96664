"""The LLM update strategies: each keeps a **pair table** as the system does (models/pair_table.py) -- one row per
pair with the model and the fingerprint (top next clusters shown) it was inferred with -- and they differ in what
refreshes a row:

==============  ===========================  ===============================  ====================================
strategy        model                        knowledge in the prompt          a row is re-inferred when
==============  ===========================  ===============================  ====================================
stale           base                         the knowledge at the split       never (the table built at the split)
rag             base                         the streaming knowledge          its fingerprint changed
finetune        periodic fine-tune           none                             a new fine-tuned model is deployed
hybrid          periodic fine-tune           the streaming knowledge          either
hybrid-scores   the same, the model's whole distribution (the served candidate scoring) -- same refresh rule
hybrid-poe      hybrid-scores' distribution x the back-off counts (product of experts) -- same refresh rule
hybrid-poe-seq  hybrid-poe x the sequence model's distribution for the user (per request) -- same refresh rule
hybrid-seq      hybrid-scores' distribution x the sequence model's (per request), no counts -- same refresh rule
hybrid-seq-sampled  hybrid-seq's distribution, the served cluster a seeded draw from it instead of its argmax
hybrid-seq-sampled-sq  the same draw from that distribution squared (renormalised): between the argmax and the draw
hybrid-seq-fitted  hybrid-seq with each expert's exponent fitted on a validation month (models/evaluation/pooling.py)
hybrid-seq-fitted-prior  the same with the next-cluster prior as a third expert: a product of two posteriors counts
                the prior twice, so its fitted exponent says how much to divide out (MovieLens fits it positive)
finetune-early  one fine-tune on an earlier  none                             never (the model never changes)
                window than the split
hybrid-early    that same early fine-tune    the streaming knowledge          its fingerprint changed
==============  ===========================  ===============================  ====================================

The early pair is the drift variant: a model that learned up to ``eval_early_finetune_gap_days`` before the split,
so retrieval has a month of knowledge to catch up on that the weights never saw.

The scored strategies' distributions are temperature-scaled (``temperature``; models/calibration.py) with one
temperature fitted before the run on transitions no fine-tune of the recipe learned from and outside the test
period (streams/eval_run.py: the early-window model on the month before the split); T = 1 when none was fitted.

Rows are planned lazily for the pairs the cases need at each state -- exactly the answers a full table would
hold -- and the number of pairs a full-table refresh would have re-inferred is counted apart
(`Ledger.pairs_changed`). All inference goes through `requests` (run in bulk by models/evaluation/inference.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.calibration import normalised, softmax
from models.clusters import ClusterSet
from models.evaluation.baselines import CountBackoff, next_totals, smoothed, times_sequence
from models.evaluation.grounding import SequenceScores
from models.evaluation.inference import SERVED_SCORES
from models.evaluation.interface import Answer, InferenceRequest, Inferred, PointState, Snapshot, Strategy
from models.evaluation.protocol import Case
from models.prompts import Knowledge

Pair = tuple[str, str]
BASE, FINETUNE, EARLY = "base", "finetune", "early"  # model roles in PointState.models


@dataclass
class _Row:
    model: str
    fingerprint: tuple[str, ...] | None
    request: InferenceRequest


@dataclass(eq=False)
class LlmTableStrategy(Strategy):
    """A pair table kept by one of the LLM update rules (see the module docstring)."""

    name: str
    label: str
    role: str  # which model answers: BASE, FINETUNE or EARLY
    knowledge: str  # "split", "stream" or "none"
    n_clusters: int
    version_of: Callable[[str], str]  # model path -> its opaque identity
    cadence: str = ""
    uses_llm: bool = True
    kind: str = "novel"  # what each row asks the model (models/evaluation/inference.py KINDS)
    rows: dict[Pair, _Row] = field(default_factory=dict)
    refresh_wall_s: dict[int, float] = field(default_factory=dict)  # state -> wall of its re-inferences, serially
    _served: dict[int, dict[Pair, InferenceRequest]] = field(default_factory=dict)
    _issued: dict[int, list[InferenceRequest]] = field(default_factory=dict)
    _last_fingerprints: dict[Pair, tuple[str, ...]] | None = None
    _last_model: str | None = None

    def __post_init__(self) -> None:
        Strategy.__init__(self)
        self.streaming = self.knowledge == "stream"

    @property
    def finetuned(self) -> bool:
        return self.role != BASE

    def model_path(self, state: PointState) -> str | None:
        return state.models.get(self.role)

    def _snapshot(self, state: PointState) -> Snapshot | None:
        return {"split": state.split_knowledge, "stream": state.knowledge}.get(self.knowledge)

    def prompt_knowledge(self, state: PointState, pair: Pair) -> Knowledge | None:
        snapshot = self._snapshot(state)
        return snapshot.knowledge(pair) if snapshot is not None else None

    def requests(self, state: PointState, cases: Sequence[Case]) -> list[InferenceRequest]:
        path = self.model_path(state)
        if path is None:
            raise RuntimeError(f"{self.name}: no {self.role} model to answer with at state {state.point}")
        snapshot = self._snapshot(state)
        self._count_full_table_refresh(snapshot, path)
        served: dict[Pair, InferenceRequest] = {}
        issued: list[InferenceRequest] = []
        for pair in sorted({c.pair for c in cases}):
            wanted = snapshot.fingerprint(pair) if snapshot is not None else None
            row = self.rows.get(pair)
            if row is None or row.model != path or (self.streaming and row.fingerprint != wanted):
                request = InferenceRequest.of(self.kind, path, self.version_of(path), pair,
                                              snapshot.knowledge(pair) if snapshot is not None else None)
                row = self.rows[pair] = _Row(path, wanted, request)
                issued.append(request)
            served[pair] = row.request
        self._served[state.point], self._issued[state.point] = served, issued
        return issued

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        wall = 0.0
        for request in self._issued.pop(state.point, []):
            done = inferred[request]
            self.ledger.cpu_s += done.cpu_s
            self.ledger.wall_s += done.wall_s
            self.ledger.inferences += 1
            wall += done.wall_s
        self.refresh_wall_s[state.point] = wall
        served = self._served.pop(state.point)
        return [self._answer_of(case, state, inferred[served[case.pair]].result) for case in cases]

    def _answer_of(self, case: Case, state: PointState, result: Mapping[str, object]) -> Answer:
        return Answer(str(result["cluster"]))

    def _count_full_table_refresh(self, snapshot: Snapshot | None, path: str) -> None:
        """Pairs of the whole table (every ordered pair) the real refresher would re-infer at this state."""
        every = self.n_clusters * (self.n_clusters - 1)
        if self._last_model is not None and path != self._last_model:
            self.ledger.pairs_changed += every  # a new model: every row is re-inferred
            self.ledger.model_updates += 1
        elif self.streaming and self._last_fingerprints is not None and snapshot is not None:
            pairs = set(self._last_fingerprints) | set(snapshot.top_next)
            self.ledger.pairs_changed += sum(1 for p in pairs if p[0] != p[1] and snapshot.fingerprint(p)
                                             != self._last_fingerprints.get(p, ()))
        self._last_model = path
        if snapshot is not None and self.streaming:
            self._last_fingerprints = {p: snapshot.fingerprint(p) for p in snapshot.top_next}


@dataclass(eq=False)
class ScoredTableStrategy(LlmTableStrategy):
    """A pair table whose rows hold the model's whole distribution over the novel clusters (kind ``served-scores``:
    every candidate's log-probability off one KV state, as a scored pair-table row holds it), refreshed by the same
    rules as the hybrid. ``combine``:

    * ``model`` -- the model's own distribution (softmax of the candidate log-probabilities): its argmax, ranking
      and log-loss;
    * ``poe``   -- a product of experts with the retrieved counts, ``p(c) ∝ p_model(c) · p_backoff(c)``, unweighted
      (fixed before any run, not fitted on the test period); ``p_backoff`` is the back-off baseline's smoothed
      distribution (models/evaluation/baselines.py) on the same streaming knowledge the prompt shows;
    * ``poe-sequence`` -- that product times the sequence model's distribution for the case's user (its next-item
      mass per cluster), unweighted: the LLM-free backoff-x-sequence baseline with the model as a third expert;
    * ``sequence`` -- the model's distribution times the sequence model's, unweighted: the LLM in the place the
      back-off counts hold in backoff-x-sequence (the prompt already carries the retrieved counts).

    The model's distribution is ``softmax(log p / temperature)`` in every mode. With ``sample_seed`` the served
    cluster is a draw from the final distribution (seeded by the seed and the case) instead of its argmax: what
    exploring by sampling costs in hit rate and buys in distinct clusters, on the same inferences; ``sample_power``
    draws from the distribution raised to it (2: squared, sharper -- a middle between the argmax, the limit, and
    the plain draw, 1). The answer's ranking and distribution stay the unsharpened ones. The sequence model's mass
    enters raised to ``sequence_weight`` (1 but for ``pooled`` strategies, whose temperature and weight are the
    maximum-likelihood exponents of the product on the validation month: streams/eval_run.py).
    """

    combine: str = "model"
    backoff: CountBackoff | None = None  # required for "poe" and "poe-sequence"
    sequence: SequenceScores | None = None  # required for "poe-sequence" and "sequence"
    temperature: float = 1.0  # the model's log-probabilities are divided by it (> 1 flattens an over-confident model)
    sequence_weight: float = 1.0  # the sequence model's mass is raised to it in the product
    pooled: bool = False  # temperature and sequence_weight fitted together on user-level validation cases
    pool_prior: bool = False  # ... and a third expert, the next-cluster prior (its exponent `prior_weight`)
    prior_weight: float = 0.0  # the prior (add-`prior_k` shares of transitions into each cluster) raised to it
    prior_k: float = 1.0
    _totals: dict[int, dict[str, int]] = field(default_factory=dict)  # state -> its next-cluster totals
    sample_seed: int | None = None  # serve a seeded draw from the distribution instead of its argmax
    sample_power: float = 1.0  # the draw's weights are the distribution raised to this power

    def _answer_of(self, case: Case, state: PointState, result: Mapping[str, object]) -> Answer:
        answer = self._ranked(case, state, result)
        if self.sample_seed is None:
            return answer
        return sampled(answer, random.Random(f"{self.sample_seed}:{self.name}:{case.key}"), self.sample_power)

    def _ranked(self, case: Case, state: PointState, result: Mapping[str, object]) -> Answer:
        scores = result["scores"]
        assert isinstance(scores, Mapping)
        distribution = softmax(scores, self.temperature)
        order = {c: i for i, c in enumerate(scores)}
        if self.combine in ("poe", "poe-sequence"):
            if self.backoff is None:
                raise ValueError(f"{self.name}: a product of experts needs the back-off baseline")
            counts = self.backoff.pair_answer(state, case.pair).distribution
            assert counts is not None
            distribution = normalised({c: p * counts[c] for c, p in distribution.items()})
        if self.prior_weight:
            prior = self._prior(state, list(distribution))
            distribution = normalised({c: p * prior[c] ** self.prior_weight for c, p in distribution.items()})
        if self.combine in ("poe-sequence", "sequence"):
            if self.sequence is None:
                raise ValueError(f"{self.name}: this product of experts needs the sequence model's scores")
            return times_sequence(distribution, self.sequence, case, list(order), self.sequence_weight)
        ranking = sorted(distribution, key=lambda c: (-distribution[c], order[c]))
        return Answer.ranked(ranking, distribution)

    def _prior(self, state: PointState, candidates: list[str]) -> dict[str, float]:
        """The next-cluster prior of the serving knowledge over `candidates` (as the popularity baseline smooths it)."""
        if state.point not in self._totals:
            self._totals[state.point] = next_totals(state.knowledge)
        return smoothed(candidates, self._totals[state.point], self.prior_k)


def sampled(answer: Answer, rng: random.Random, power: float = 1.0) -> Answer:
    """`answer` with its served cluster drawn from its distribution raised to `power` (the rest of its ranking in
    order after it)."""
    assert answer.distribution is not None and answer.ranking
    ranking = answer.ranking
    drawn = rng.choices(ranking, weights=[answer.distribution.get(c, 0.0) ** power for c in ranking])[0]
    return Answer.ranked([drawn, *(c for c in ranking if c != drawn)], answer.distribution)


def llm_strategies(n_clusters: int, version_of: Callable[[str], str], finetune_every: int, early_gap_days: int,
                   backoff: CountBackoff | None = None, sequence: SequenceScores | None = None, seed: int = 0,
                   prior_k: float = 1.0) -> list[LlmTableStrategy]:
    ft_cadence = f"a fine-tune every {finetune_every} points" if finetune_every else "one fine-tune at the split"
    early = f"one fine-tune on the data up to {early_gap_days} days before the split"

    def make(name: str, label: str, role: str, knowledge: str, cadence: str) -> LlmTableStrategy:
        return LlmTableStrategy(name, label, role, knowledge, n_clusters, version_of, cadence=cadence)

    def scored(name: str, label: str, **how: Any) -> ScoredTableStrategy:
        """A scored table on the hybrid's models and refresh rule; `how` says how its distribution is read."""
        return ScoredTableStrategy(name, label, FINETUNE, "stream", n_clusters, version_of,
                                   cadence=f"{ft_cadence} + every knowledge sync", kind=SERVED_SCORES, **how)

    return [
        make("stale", "stale: table built at the split, never refreshed", BASE, "split", "never"),
        make("rag", "RAG only: base model, streaming knowledge", BASE, "stream",
             "every knowledge sync (changed pairs)"),
        make("finetune", "fine-tuning only: periodic fine-tunes, no knowledge", FINETUNE, "none", ft_cadence),
        make("hybrid", "hybrid: periodic fine-tunes + streaming knowledge", FINETUNE, "stream",
             f"{ft_cadence} + every knowledge sync"),
        scored("hybrid-scores", "hybrid, the model's whole distribution (candidate scoring)", combine="model"),
        scored("hybrid-poe", "hybrid x retrieved counts (product of experts with back-off)", combine="poe",
               backoff=backoff),
        scored("hybrid-poe-seq", "hybrid-poe x the sequence model's distribution (per request)",
               combine="poe-sequence", backoff=backoff, sequence=sequence),
        scored("hybrid-seq", "hybrid's distribution x the sequence model's (per request, no counts)", combine="sequence",
               sequence=sequence),
        scored("hybrid-seq-sampled", "hybrid-seq, the served cluster drawn from its distribution (seeded) instead of "
               "its argmax", combine="sequence", sequence=sequence, sample_seed=seed),
        scored("hybrid-seq-sampled-sq", "hybrid-seq, the served cluster drawn from its distribution squared (seeded)",
               combine="sequence", sequence=sequence, sample_seed=seed, sample_power=2.0),
        scored("hybrid-seq-fitted", "hybrid-seq, each expert's exponent fitted on the month before the split",
               combine="sequence", sequence=sequence, pooled=True),
        scored("hybrid-seq-fitted-prior", "hybrid-seq-fitted with the next-cluster prior as a third expert, its "
               "exponent fitted too", combine="sequence", sequence=sequence, pooled=True, pool_prior=True,
               prior_k=prior_k),
        make("finetune-early", "fine-tuned on an earlier window, no knowledge", EARLY, "none", f"never ({early})"),
        make("hybrid-early", "fine-tuned on an earlier window + streaming knowledge", EARLY, "stream",
             "every knowledge sync (the model never changes)"),
    ]


# ---------------------------------------------------------------------------------------------------- validity
def free_generation(model_path: str | Path, prompts: Sequence[tuple[Pair, Knowledge | None]], clusters: ClusterSet,
                    threads: int) -> list[str]:
    """Unconstrained greedy answers (what the model says without the server's constrained decoding), for the
    exact-match rate; uses the fine-tuning gates' generator (models/finetune/gates.py)."""
    from models.finetune.gates import GreedyGenerator
    from models.finetune.training import PromptTokenizer
    from models.prompts import prompt_segments

    tokenizer = PromptTokenizer(model_path)
    generator = GreedyGenerator(model_path, threads)
    try:
        max_new = max(len(tokenizer.tokenize(c.name)) for c in clusters.clusters.values()) + 4
        out = []
        for pair, knowledge in prompts:
            static, rest = tokenizer.prompt(prompt_segments(pair, knowledge, clusters))
            out.append(tokenizer.detokenize(generator.answer(static, rest, max_new)).strip())
        return out
    finally:
        generator.close()
        tokenizer.close()

"""LLM-free baselines, so that a win of an LLM strategy means something. Every one ranks the novel clusters
(hit@3); those with a probability model also give a distribution (log-loss).

==========  ===================================================================  ==================================
baseline    served cluster / ranking                                             distribution
==========  ===================================================================  ==================================
random      a seeded shuffle of the novel clusters (one per state and pair)      uniform
popular     most transitions into it, all pairs (the streaming knowledge)        add-k smoothed popularity
count       the pair's top retrieved next clusters, then the system's fallback   none (an argmax)
            order (models/recommend.fallback_cluster: trending, then largest)
backoff     the distribution's order                                             pair -> last cluster -> popularity
sequence    the unrestricted SASRec's own choice: clusters by their best item,   SASRec's next-item mass per
            the user's items and the pair's clusters left out                    cluster
backoff x   the product of the two distributions above, unweighted (a request-   normalised product
sequence    level answer: the pair's counts and the user's own items)
==========  ===================================================================  ==================================

**backoff** is a hierarchical additive smoothing, so it backs off exactly where the pair is sparse:
``p_pop(c) = (n(c) + k) / sum(n + k)``, ``p_last(c) = (n_last(c) + m p_pop(c)) / (N_last + m)``,
``p(c) = (n_pair(c) + m p_last(c)) / (N_pair + m)`` over the novel clusters c, where n_last counts the transitions
out of every pair ending in the user's latest cluster. A pair without transitions gets the last cluster's
distribution, a last cluster without any gets popularity. k and m are fixed settings (1 and 1), chosen before any
run and not tuned on the test period. **backoff x sequence** is the product of experts of the back-off's and
the sequence model's distributions, ``p(c) ∝ p_backoff(c) · p_sequence(c)``, unweighted for the same reason.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from models.clusters import ClusterSet
from models.evaluation.grounding import SequenceScores
from models.evaluation.interface import Answer, Inferred, InferenceRequest, PointState, Snapshot, Strategy
from models.evaluation.protocol import Case
from models.prompts import candidate_ids

Pair = tuple[str, str]


def fallback_order(pair: Pair, top_next: Sequence[tuple[str, int]], trending: Sequence[str], clusters: ClusterSet
                   ) -> list[str]:
    """Every novel cluster in models/recommend.fallback_cluster's order (its first element is that function's
    answer): the retrieved next clusters, then the trending ones, then by size."""
    order: dict[str, None] = {}
    by_size = [c.id for c in sorted(clusters.clusters.values(), key=lambda c: (-c.size, c.id))]
    for cid in [c for c, _ in top_next] + list(trending) + by_size:
        if cid in clusters.clusters and cid not in pair:
            order.setdefault(cid, None)
    return list(order)


def next_totals(snapshot: Snapshot) -> dict[str, int]:
    """Transitions into each cluster, over every pair."""
    totals: dict[str, int] = {}
    for row in snapshot.top_next.values():
        for c3, n in row:
            totals[c3] = totals.get(c3, 0) + n
    return totals


def _per_pair(cases: Sequence[Case], answer_of: Any) -> list[Answer]:
    memo: dict[Pair, Answer] = {}
    out = []
    for case in cases:
        if case.pair not in memo:
            memo[case.pair] = answer_of(case.pair)
        out.append(memo[case.pair])
    return out


class RandomNovel(Strategy):
    name, label, cadence = "random", "random novel cluster (seeded)", "none needed"

    def __init__(self, clusters: ClusterSet, seed: int) -> None:
        super().__init__()
        self.clusters, self.seed = clusters, seed

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        def one(pair: Pair) -> Answer:
            # one draw per (seed, state, pair): like a table row, users sharing a pair share the answer
            candidates = candidate_ids(pair, self.clusters)
            ranking = random.Random(f"{self.seed}:{state.point}:{pair[0]}:{pair[1]}").sample(candidates,
                                                                                               len(candidates))
            return Answer.ranked(ranking, {c: 1 / len(candidates) for c in candidates})

        return _per_pair(cases, one)


class PopularNovel(Strategy):
    name, label, cadence = "popular", "most popular novel cluster", "every knowledge sync"
    streaming = True

    def __init__(self, clusters: ClusterSet, k: float = 1.0) -> None:
        super().__init__()
        self.clusters, self.k = clusters, k

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        with self.ledger.measure():
            totals = next_totals(state.knowledge)
            ranked = sorted(totals, key=lambda c: (-totals[c], c))

            def one(pair: Pair) -> Answer:
                order = fallback_order(pair, [(c, totals[c]) for c in ranked], state.knowledge.trending,
                                       self.clusters)
                return Answer.ranked(order, smoothed(order, totals, self.k))

            return _per_pair(cases, one)


class CountArgmax(Strategy):
    name, label, cadence = "count", "top retrieved next cluster (count argmax)", "every knowledge sync"
    streaming = True

    def __init__(self, clusters: ClusterSet) -> None:
        super().__init__()
        self.clusters = clusters

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        with self.ledger.measure():
            return _per_pair(cases, lambda pair: Answer.ranked(fallback_order(
                pair, state.knowledge.top_next.get(pair, []), state.knowledge.trending, self.clusters)))


class CountBackoff(Strategy):
    name, label, cadence = "backoff", "count with back-off (pair -> last cluster -> popularity), smoothed", \
        "every knowledge sync"
    streaming = True

    def __init__(self, clusters: ClusterSet, k: float = 1.0, m: float = 1.0) -> None:
        super().__init__()
        self.clusters, self.k, self.m = clusters, k, m
        self._levels: tuple[Snapshot, dict[str, int], dict[str, dict[str, int]]] | None = None

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        with self.ledger.measure():
            return _per_pair(cases, lambda pair: self.pair_answer(state, pair))

    def pair_answer(self, state: PointState, pair: Pair) -> Answer:
        """The smoothed distribution for `pair` on this state's streaming knowledge (its levels computed once per
        state; the product-of-experts strategy reads it too)."""
        if self._levels is None or self._levels[0] is not state.knowledge:
            by_last: dict[str, dict[str, int]] = {}
            for (_, c2), row in state.knowledge.top_next.items():
                target = by_last.setdefault(c2, {})
                for c3, n in row:
                    target[c3] = target.get(c3, 0) + n
            self._levels = (state.knowledge, next_totals(state.knowledge), by_last)
        _, totals, by_last = self._levels
        return self.distribution_answer(pair, dict(state.knowledge.top_next.get(pair, [])),
                                        by_last.get(pair[1], {}), totals)

    def distribution_answer(self, pair: Pair, pair_counts: Mapping[str, int], last_counts: Mapping[str, int],
                            totals: Mapping[str, int]) -> Answer:
        candidates = candidate_ids(pair, self.clusters)
        p = smoothed(candidates, totals, self.k)
        for counts in (last_counts, pair_counts):  # each level is smoothed towards the one below it
            n = sum(counts.get(c, 0) for c in candidates)
            p = {c: (counts.get(c, 0) + self.m * p[c]) / (n + self.m) for c in candidates}
        order = {c: i for i, c in enumerate(candidates)}
        return Answer.ranked(sorted(candidates, key=lambda c: (-p[c], order[c])), p)


class SequenceChoice(Strategy):
    name, label = "sequence", "unrestricted sequence recommender's own cluster (SASRec, top item)"
    cadence = "never retrained (its input: the user's live recent items)"

    def __init__(self, clusters: ClusterSet, scores: SequenceScores) -> None:
        super().__init__()
        self.clusters, self.scores = clusters, scores

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        with self.ledger.measure():
            out = []
            for case in cases:
                ranking, distribution = self.scores.clusters_for(case, candidate_ids(case.pair, self.clusters))
                out.append(Answer.ranked(ranking, distribution))
            return out


class BackoffTimesSequence(Strategy):
    name, label = "backoff-x-sequence", "back-off counts x the sequence model's distribution (product of experts)"
    cadence = "every knowledge sync (the sequence model never retrained)"
    streaming = True

    def __init__(self, backoff: CountBackoff, scores: SequenceScores) -> None:
        super().__init__()
        self.backoff, self.scores = backoff, scores

    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        with self.ledger.measure():
            return [self.case_answer(state, case) for case in cases]

    def case_answer(self, state: PointState, case: Case) -> Answer:
        pair_answer = self.backoff.pair_answer(state, case.pair)
        assert pair_answer.distribution is not None
        return times_sequence(pair_answer.distribution, self.scores, case, pair_answer.ranking)


def times_sequence(distribution: Mapping[str, float], scores: SequenceScores, case: Case,
                   tie_order: Sequence[str], weight: float = 1.0) -> Answer:
    """`distribution` multiplied by the sequence model's next-item mass per cluster for this case (raised to
    `weight`) and renormalised, ranked with ties in `tie_order`. Where the sequence model has no unseen item in any
    candidate, `distribution` alone."""
    from models.recommend import times_sequence_mass

    _, sequence_p = scores.clusters_for(case, list(distribution))
    joint = times_sequence_mass(distribution, sequence_p, weight)
    total = sum(joint.values())
    order = {c: i for i, c in enumerate(tie_order)}
    ranking = sorted(joint, key=lambda c: (-joint[c], order.get(c, len(order)), c))
    return Answer.ranked(ranking, {c: v / total for c, v in joint.items()})


def smoothed(candidates: Sequence[str], counts: Mapping[str, int], k: float) -> dict[str, float]:
    """Add-k smoothed shares of `counts` over `candidates`."""
    total = sum(counts.get(c, 0) + k for c in candidates)
    return {c: (counts.get(c, 0) + k) / total for c in candidates}

"""The sequence model's side of the evaluation: its scores for each case (batched), the grounded items of an answer
(models/recommend.grounded_items' rule: the cluster's items ranked by the user's scores, the user's own items
excluded), and the unrestricted recommender's own cluster ranking and distribution (a baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models.clusters import ClusterSet
from models.evaluation.protocol import Case


class SequenceScores:
    """SASRec scores after each case's recent items, computed once per case."""

    def __init__(self, sequence: Any, clusters: ClusterSet, k: int) -> None:
        from models.recommend import ClusterMass, members_by_cluster

        self.sequence, self.clusters, self.k = sequence, clusters, k
        self.members = members_by_cluster(clusters)
        self._scores: dict[tuple[Any, ...], Any] = {}
        self._mass = ClusterMass(sequence, clusters)  # what serving multiplies by (models/recommend.py)

    def prepare(self, cases: Sequence[Case]) -> None:
        todo = [c for c in cases if c.key not in self._scores]
        for start in range(0, len(todo), 256):
            batch = todo[start:start + 256]
            scores = self.sequence.score_batch([c.recent_items for c in batch])
            for case, row in zip(batch, scores, strict=True):
                self._scores[case.key] = row

    def row(self, case: Case) -> Any:
        return self._scores[case.key]

    def items(self, case: Case, cluster: str) -> list[str]:
        """The `k` grounded items of `cluster` for this case's user."""
        import torch

        row = self.row(case)
        had = set(case.recent_items)
        index = self.sequence.index
        allowed = sorted({index[i] for i in self.members.get(cluster, []) if i in index and i not in had})
        if not allowed:
            return []
        top = torch.topk(row[allowed], min(self.k, len(allowed)))
        return [self.sequence.item_ids[allowed[int(i)] - 1] for i in top.indices]

    def clusters_for(self, case: Case, candidates: Sequence[str]) -> tuple[list[str], dict[str, float]]:
        """(the candidate clusters ordered by their best unseen item's score, the model's probability that the next
        item is in each candidate -- softmax over every unseen item, mass summed per cluster, renormalised over
        the candidates). Candidates without an unseen scored item come last in the given order, with zero mass."""
        found = self._mass.per_cluster(self.row(case).double().numpy(), case.recent_items, candidates)
        if found is None:
            return list(candidates), {c: 1 / len(candidates) for c in candidates}
        mass, best = found
        order = sorted(range(len(candidates)), key=lambda i: (-best[i], i))
        return [candidates[i] for i in order], {c: float(mass[i]) for i, c in enumerate(candidates)}

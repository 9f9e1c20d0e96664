"""Metrics of one strategy's answers, each with a user-bootstrap 95% interval, and paired differences.

Per case (`Outcome`): hit@1, hit@3 (when the strategy ranks), the log-loss of the next novel cluster (when it has
a distribution), the item hit, validity, and whether the served cluster is in the long tail (outside the 10 most
popular next clusters at the split) with its novelty (self-information, bits, of its next-cluster share at the
split). A strategy-level metric is the mean of a per-case value over the cases where it is defined.

The bootstrap resamples **users** (with replacement, all of a user's cases together), not cases: one user
evaluated at several moments is one correlated unit, and resampling cases would make the intervals too narrow. A
paired difference between two strategies uses the same resampled users for both, so what they share (who was
evaluated, how hard the user is) cancels out. A resample that holds no case of a stratum says nothing about it
and is left out of that stratum's interval (not counted as a rate of 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

LOG_LOSS_FLOOR = 1e-9  # a probability below this is scored as this (a distribution with zeros stays finite)
LONG_TAIL_HEAD = 10  # the "head": the 10 most popular next clusters


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


NAN = Interval(float("nan"), float("nan"), float("nan"))


@dataclass(frozen=True, eq=False)
class Outcome:
    """One case as one strategy answered it."""

    key: tuple[object, ...]  # the case (the same for every strategy)
    user_id: str
    point: int  # the state that served it
    cluster: str
    hit: bool
    item_hit: bool
    valid: bool  # a real cluster outside the user's two latest clusters
    hit3: bool | None = None  # None: the strategy does not rank
    log_loss: float | None = None  # None: the strategy has no distribution
    long_tail: bool = False
    novelty: float = 0.0
    strata: Mapping[str, str] = field(default_factory=dict)


def log_loss(distribution: Mapping[str, float], target: str) -> float:
    return -math.log(max(distribution.get(target, 0.0), LOG_LOSS_FLOOR))


def _value(outcome: Outcome, name: str) -> float | None:
    value = getattr(outcome, name)
    return None if value is None else float(value)


def _per_user(outcomes: Sequence[Outcome], users: Sequence[str], name: str) -> tuple[np.ndarray, np.ndarray]:
    index = {u: i for i, u in enumerate(users)}
    sums, counts = np.zeros(len(users)), np.zeros(len(users))
    for outcome in outcomes:
        value = _value(outcome, name)
        if value is None:
            continue
        i = index[outcome.user_id]
        sums[i] += value
        counts[i] += 1
    return sums, counts


def resample_users(n_users: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_users) indices of users drawn with replacement; share them across strategies to pair them."""
    return np.random.default_rng(seed).integers(0, n_users, size=(resamples, n_users))


def _interval(sums: np.ndarray, counts: np.ndarray, draws: np.ndarray) -> Interval:
    total = counts.sum()
    if total == 0:
        return NAN
    value = float(sums.sum() / total)
    n = counts[draws].sum(axis=1)
    sampled = sums[draws].sum(axis=1)[n > 0] / n[n > 0]
    low, high = np.percentile(sampled, [2.5, 97.5])
    # the percentile interval always contains the point estimate up to float rounding; clamp that rounding away
    return Interval(value, float(min(low, value)), float(max(high, value)))


def rate_interval(outcomes: Sequence[Outcome], draws: np.ndarray, users: Sequence[str], name: str = "hit"
                  ) -> Interval:
    """The mean of `name` over the outcomes where it is defined, with the percentile 95% interval over the user
    resamples `draws` (NAN when it is defined nowhere)."""
    sums, counts = _per_user(outcomes, users, name)
    return _interval(sums, counts, draws)


def defined(outcomes: Sequence[Outcome], name: str) -> bool:
    return any(_value(o, name) is not None for o in outcomes)


def paired_difference(a: Sequence[Outcome], b: Sequence[Outcome], draws: np.ndarray, users: Sequence[str],
                      name: str = "hit") -> Interval:
    """mean(a) - mean(b) of `name` over the same cases, with the paired user-bootstrap 95% interval; only the cases
    where both define it count."""
    if [o.key for o in a] != [o.key for o in b]:
        raise ValueError("a paired difference needs both strategies answering the same cases in order")
    both = [(x, y) for x, y in zip(a, b, strict=True) if _value(x, name) is not None and _value(y, name) is not None]
    if not both:
        return NAN
    sums_a, counts = _per_user([x for x, _ in both], users, name)
    sums_b, _ = _per_user([y for _, y in both], users, name)
    return _interval(sums_a - sums_b, counts, draws)


def where(outcomes: Sequence[Outcome], predicate: Callable[[Outcome], bool]) -> list[Outcome]:
    return [o for o in outcomes if predicate(o)]


def in_stratum(dimension: str, value: str) -> Callable[[Outcome], bool]:
    return lambda outcome: outcome.strata.get(dimension) == value


def exploration(outcomes: Sequence[Outcome], n_clusters: int) -> tuple[int, float]:
    """(distinct clusters served, their share of all clusters)."""
    distinct = len({o.cluster for o in outcomes})
    return distinct, distinct / n_clusters if n_clusters else 0.0


def validity(outcomes: Sequence[Outcome]) -> float:
    return sum(o.valid for o in outcomes) / len(outcomes) if outcomes else float("nan")


def rate_by_point(outcomes: Sequence[Outcome], name: str = "hit") -> dict[int, float]:
    totals: dict[int, list[float]] = {}
    for outcome in outcomes:
        value = _value(outcome, name)
        if value is None:
            continue
        sums_n = totals.setdefault(outcome.point, [0.0, 0])
        sums_n[0] += value
        sums_n[1] += 1
    return {point: sums / n for point, (sums, n) in sorted(totals.items())}


def popularity_head(totals: Mapping[str, int], n: int = LONG_TAIL_HEAD) -> frozenset[str]:
    """The `n` most popular next clusters (ties by id)."""
    return frozenset(sorted(totals, key=lambda c: (-totals[c], c))[:n])


def novelty_bits(totals: Mapping[str, int], clusters: Sequence[str]) -> dict[str, float]:
    """Self-information (bits) of each cluster's add-one smoothed share of next-cluster transitions."""
    total = sum(totals.get(c, 0) + 1 for c in clusters)
    return {c: -math.log2((totals.get(c, 0) + 1) / total) for c in clusters}


def exact_match_rate(answers: Sequence[tuple[tuple[str, str], str]], names: Mapping[str, str]) -> float:
    """Share of free-generation answers (pair, generated text) that are exactly a novel cluster's name."""
    by_name = {name: cid for cid, name in names.items()}
    if not answers:
        return float("nan")
    good = sum(1 for pair, text in answers if by_name.get(text) is not None and by_name[text] not in pair)
    return good / len(answers)

"""The evaluation protocol: what is predicted for whom, when, and what counts as a hit.

* **Split** by event time at ``train_fraction`` (the clusters, the sequence model and the first fine-tune learn from
  the ratings before it; models/embeddings.training_ratings cuts at the same index).
* **Evaluation points**: ``points`` whole-day boundaries (UTC midnights, so the knowledge's daily buckets split
  cleanly) evenly spaced inside the post-split period, the last one still leaving a period after it.
* **Who**: at a point, every user whose collapsed positive-engagement cluster sequence before the point (the
  contract's rule: positive engagements in event-time order, ties by event_id, consecutive repeats collapsed) has at
  least two entries -- the pair is its last two, as the recommender reads it from the transitions state -- and who
  has at least one positive engagement within the horizon after the point (without one every answer is a miss, which
  says nothing about the strategies).
* **Hit**: the predicted novel cluster is the cluster of one of the user's next ``horizon_events`` positive
  engagements after the point (and, when ``horizon_days`` is set, within that many days). **Item hit**: one of the
  grounded items is one of those engagements' items.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from models.counts import DAY_S
from streams.movielens import Rating
from streams.settings import Settings

Pair = tuple[str, str]


@dataclass(frozen=True)
class Horizon:
    events: int
    days: float | None = None

    def describe(self) -> str:
        text = f"next {self.events} positive engagements"
        return text + (f" within {self.days:g} days" if self.days else "")


@dataclass(frozen=True)
class Timeline:
    """The split and the evaluation points, in event time (epoch seconds)."""

    split_index: int  # ratings[:split_index] are the training period
    split_ts: float
    end_ts: float  # the last rating's time
    points: tuple[float, ...]

    def chunks(self, ratings: Sequence[Rating]) -> list[tuple[int, int]]:
        """Index ranges [start, stop) of the ratings to replay before each point (the first one includes the
        training period: the knowledge at the split must hold it)."""
        bounds, start = [], 0
        for point in self.points:
            stop = _first_at_or_after(ratings, point, start)
            bounds.append((start, stop))
            start = stop
        return bounds


def make_timeline(ratings: Sequence[Rating], train_fraction: float, points: int) -> Timeline:
    if len(ratings) < 2:
        raise ValueError("need ratings to split")
    split_index = int(len(ratings) * train_fraction)
    split_ts, end_ts = ratings[split_index].ts, ratings[-1].ts
    first_day, last_day = math.ceil(split_ts / DAY_S), math.floor(end_ts / DAY_S)
    days = last_day - first_day
    if days < points + 1:
        raise ValueError(f"the post-split period spans {days} whole days: too short for {points} points")
    step = days / (points + 1)  # the last point keeps one step of events after it for the horizon
    chosen = [first_day + round(step * (k + 1)) for k in range(points)]
    return Timeline(split_index, split_ts, end_ts, tuple(float(day * DAY_S) for day in chosen))


def _first_at_or_after(ratings: Sequence[Rating], ts: float, start: int = 0) -> int:
    lo, hi = start, len(ratings)
    while lo < hi:
        mid = (lo + hi) // 2
        if ratings[mid].ts < ts:
            lo = mid + 1
        else:
            hi = mid
    return lo


@dataclass
class UserEvents:
    """One user's events in the contract's order: every interaction (items) and the positive ones with clusters."""

    items: list[tuple[float, str]] = field(default_factory=list)  # (ts, item_id), every interaction
    positives: list[tuple[float, str, str]] = field(default_factory=list)  # (ts, item_id, cluster_id)


def user_events(ratings: Iterable[Rating], cluster_of: Callable[[str], str | None], settings: Settings
                ) -> dict[str, UserEvents]:
    """Ratings (already in event-time order, ties by event_id) grouped per user."""
    users: dict[str, UserEvents] = {}
    for rating in ratings:
        events = users.setdefault(rating.user_id, UserEvents())
        events.items.append((rating.ts, rating.item_id))
        if settings.is_positive("rating", rating.rating):
            cluster = cluster_of(rating.item_id)
            if cluster is not None:  # an item outside the clusters is no engagement with any cluster
                events.positives.append((rating.ts, rating.item_id, cluster))
    return users


@dataclass(frozen=True)
class Case:
    """One user at one evaluation point: what the strategies see and what the future holds."""

    user_id: str
    point: int
    pair: Pair  # (older, latest) of the two latest distinct clusters
    recent_items: tuple[str, ...]  # the sequence model's input and the "already had" filter
    future_clusters: frozenset[str]
    future_items: frozenset[str]


def collapsed(clusters: Iterable[str]) -> list[str]:
    out: list[str] = []
    for cluster in clusters:
        if not out or out[-1] != cluster:
            out.append(cluster)
    return out


def recent_items(items: Iterable[tuple[float, str]], before: float, kept: int) -> tuple[str, ...]:
    """Items interacted with before `before`, oldest first, a re-engagement moving an item up (as the profiles do)."""
    order: dict[str, None] = {}
    for ts, item in items:
        if ts >= before:
            break
        order.pop(item, None)
        order[item] = None
    return tuple(list(order)[-kept:])


def case_at(user_id: str, events: UserEvents, point: int, ts: float, horizon: Horizon, kept: int) -> Case | None:
    past = [c for t, _, c in events.positives if t < ts]
    history = collapsed(past)
    if len(history) < 2:
        return None
    future = [(t, item, c) for t, item, c in events.positives if t >= ts]
    if horizon.days is not None:
        future = [f for f in future if f[0] < ts + horizon.days * DAY_S]
    future = future[:horizon.events]
    if not future:
        return None
    return Case(user_id, point, (history[-2], history[-1]), recent_items(events.items, ts, kept),
                frozenset(c for _, _, c in future), frozenset(item for _, item, _ in future))


def cases_at(users: Mapping[str, UserEvents], point: int, ts: float, horizon: Horizon, kept: int) -> list[Case]:
    found = (case_at(user, events, point, ts, horizon, kept) for user, events in sorted(users.items()))
    return [case for case in found if case is not None]


def busiest_pairs(cases: Sequence[Case], limit: int | None) -> list[Case]:
    """Only the cases of the `limit` pairs most users share (ties by pair): LLM inference is paid per pair."""
    if limit is None:
        return list(cases)
    users_per_pair: dict[Pair, int] = {}
    for case in cases:
        users_per_pair[case.pair] = users_per_pair.get(case.pair, 0) + 1
    kept = set(sorted(users_per_pair, key=lambda p: (-users_per_pair[p], p))[:limit])
    return [case for case in cases if case.pair in kept]


def is_hit(predicted: str, case: Case) -> bool:
    return predicted in case.future_clusters


def is_item_hit(items: Iterable[str], case: Case) -> bool:
    return any(item in case.future_items for item in items)

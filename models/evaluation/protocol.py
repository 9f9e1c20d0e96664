"""The evaluation protocol: what is predicted for whom, when, and what counts as a hit.

Fixed before and independent of any strategy: every strategy answers exactly the same cases.

* **Split** by event time at ``train_fraction`` (the clusters, the sequence model and the first fine-tune learn from
  the ratings before it; models/embeddings.training_ratings cuts at the same index).
* **States**: the knowledge the pipeline holds at the split (state 0) and at ``points`` evaluation points (states
  1..points) -- whole-day boundaries (UTC midnights, so the knowledge's daily buckets split cleanly) evenly spaced
  inside the post-split period, the last one still leaving a period after it. A case is answered with the latest
  state at or before its time: the knowledge (and every strategy's pair table) as of that state, never later.
* **Who**, two anchors, both from the contract's per-user rule (positive engagements in event-time order, ties by
  event_id, consecutive repeats collapsed; the pair is the last two entries, as the recommender reads it from the
  transitions state):

  - ``point``: every user with a pair before an evaluation point (at least two collapsed entries) is a case at that
    point;
  - ``request``: a recommendation request follows every ``request_every``-th positive engagement of a user (counted
    over the user's whole history, the live system's ``EXPLORER_AUTO_REQUEST_EVERY`` rule) made after the split; the
    pair includes that engagement. MovieLens users rate in bursts of minutes, so a whole-day point almost never falls
    inside one: points alone reach ~130 users however many there are, requests reach the ~290 users active after
    the split.

  Either way a case needs, in the horizon, at least one positive engagement with a cluster outside the pair (every
  answer is outside the pair, so without one every strategy misses by construction: 2-4% of candidates).
* **Hit** (hit@1): the answer is the cluster of one of the user's next ``horizon.events`` positive engagements (and,
  when ``horizon.days`` is set, within that many days). **hit@3**: one of a ranking's first three is. **Next novel
  cluster**: the first of those engagements' clusters outside the pair (the target of the log-loss). **Item hit**:
  one of the grounded items is one of those engagements' items.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from models.counts import DAY_S
from streams.movielens import Rating
from streams.settings import Settings

Pair = tuple[str, str]
ANCHORS = ("point", "request")


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

    @property
    def states(self) -> tuple[float, ...]:
        """State k's time: the split (k = 0), then evaluation point k."""
        return (self.split_ts, *self.points)

    def state_at(self, ts: float) -> int:
        """The latest state at or before `ts` (ts >= split_ts)."""
        return max(0, bisect.bisect_right(self.points, ts))

    def chunks(self, ratings: Sequence[Rating]) -> list[tuple[int, int]]:
        """Index ranges [start, stop) of the ratings to replay before each state: the training period, then each
        chunk up to the next point."""
        bounds, start = [(0, self.split_index)], self.split_index
        for point in self.points:
            stop = max(start, _first_at_or_after(ratings, point, start))
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


@dataclass(frozen=True)
class Positive:
    ts: float
    item: str
    cluster: str
    seq: int  # index of this engagement in the user's `items`


@dataclass
class UserEvents:
    """One user's events in the contract's order: every interaction (items) and the positive ones with clusters."""

    items: list[tuple[float, str]] = field(default_factory=list)  # (ts, item_id), every interaction
    positives: list[Positive] = field(default_factory=list)


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
                events.positives.append(Positive(rating.ts, rating.item_id, cluster, len(events.items) - 1))
    return users


@dataclass(frozen=True)
class Case:
    """One user at one moment: what the strategies see and what the future holds."""

    user_id: str
    state: int  # the state that serves it (0: the split, k: evaluation point k)
    anchor: str  # "point" or "request"
    ts: float
    pair: Pair  # (older, latest) of the two latest distinct clusters
    recent_items: tuple[str, ...]  # the sequence model's input and the "already had" filter
    future_clusters: frozenset[str]
    future_items: frozenset[str]
    next_novel: str  # the first future cluster outside the pair

    @property
    def key(self) -> tuple[str, int, str, float]:
        return (self.user_id, self.state, self.anchor, self.ts)


def collapsed(clusters: Iterable[str]) -> list[str]:
    out: list[str] = []
    for cluster in clusters:
        if not out or out[-1] != cluster:
            out.append(cluster)
    return out


def recent_items(items: Iterable[tuple[float, str]], before: float, kept: int) -> tuple[str, ...]:
    """Items interacted with before `before`, oldest first, a re-engagement moving an item up (as the profiles do)."""
    return _recent(((ts, item) for ts, item in items if ts < before), kept)


def _recent(items: Iterable[tuple[float, str]], kept: int) -> tuple[str, ...]:
    order: dict[str, None] = {}
    for _, item in items:
        order.pop(item, None)
        order[item] = None
    return tuple(list(order)[-kept:])


def _case(user_id: str, state: int, anchor: str, ts: float, past: Sequence[Positive], future: Sequence[Positive],
          recent: tuple[str, ...], horizon: Horizon) -> Case | None:
    history = collapsed(p.cluster for p in past)
    if len(history) < 2:
        return None
    if horizon.days is not None:
        future = [f for f in future if f.ts < ts + horizon.days * DAY_S]
    future = future[:horizon.events]
    pair = (history[-2], history[-1])
    novel = [f.cluster for f in future if f.cluster not in pair]
    if not novel:
        return None
    return Case(user_id, state, anchor, ts, pair, recent, frozenset(f.cluster for f in future),
                frozenset(f.item for f in future), novel[0])


def case_at(user_id: str, events: UserEvents, state: int, ts: float, horizon: Horizon, kept: int) -> Case | None:
    """The point-anchored case of a user at state `state` (time `ts`): everything before `ts` is the past."""
    cut = bisect.bisect_left([p.ts for p in events.positives], ts)
    return _case(user_id, state, "point", ts, events.positives[:cut], events.positives[cut:],
                 recent_items(events.items, ts, kept), horizon)


def request_cases(user_id: str, events: UserEvents, timeline: Timeline, every: int, horizon: Horizon, kept: int
                  ) -> list[Case]:
    """The user's request-anchored cases: after every `every`-th positive engagement made after the split."""
    out = []
    for j in range(every - 1, len(events.positives), every):
        trigger = events.positives[j]
        if trigger.ts < timeline.split_ts:
            continue
        recent = _recent(events.items[:trigger.seq + 1], kept)
        case = _case(user_id, timeline.state_at(trigger.ts), "request", trigger.ts, events.positives[:j + 1],
                     events.positives[j + 1:], recent, horizon)
        if case is not None:
            out.append(case)
    return out


def all_cases(users: Mapping[str, UserEvents], timeline: Timeline, horizon: Horizon, kept: int, request_every: int
              ) -> list[Case]:
    """Every case of both anchors, ordered by (state, anchor, user, time): the evaluation's fixed case list."""
    cases: list[Case] = []
    for user, events in sorted(users.items()):
        for k, ts in enumerate(timeline.points, start=1):
            case = case_at(user, events, k, ts, horizon, kept)
            if case is not None:
                cases.append(case)
        if request_every > 0:
            cases.extend(request_cases(user, events, timeline, request_every, horizon, kept))
    return sorted(cases, key=lambda c: (c.state, c.anchor, c.user_id, c.ts))


def busiest_pairs(cases: Sequence[Case], limit: int | None) -> list[Case]:
    """Only the cases of the `limit` pairs most cases share at each state (ties by pair): `--quick` only."""
    if limit is None:
        return list(cases)
    per_state: dict[int, dict[Pair, int]] = {}
    for case in cases:
        counts = per_state.setdefault(case.state, {})
        counts[case.pair] = counts.get(case.pair, 0) + 1
    kept = {state: set(sorted(counts, key=lambda p: (-counts[p], p))[:limit]) for state, counts in per_state.items()}
    return [case for case in cases if case.pair in kept[case.state]]


def is_hit(predicted: str, case: Case) -> bool:
    return predicted in case.future_clusters


def is_hit_at(ranking: Sequence[str], case: Case, k: int) -> bool:
    return any(cluster in case.future_clusters for cluster in ranking[:k])


def is_item_hit(items: Iterable[str], case: Case) -> bool:
    return any(item in case.future_items for item in items)

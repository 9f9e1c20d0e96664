"""Transition and trend counts as data: the key layout of the partition state, merged counts and rolling windows.

What is counted (../shared/contract.md, "Cluster transitions"): per user, the positive engagements in event-time
order (ties broken by event_id) are mapped to interest clusters (items without a cluster are skipped) and
consecutive repeats are collapsed. Each run of three consecutive collapsed entries ``(c1, c2, c3)`` with three
distinct clusters is one transition ``(c1, c2) -> c3``, counted at the event time of the engagement that produced
``c3`` (the first engagement of c3's run). Counts are kept all-time and per daily bucket ``day = floor(ts / 86400)``;
a rolling window "last N days" is the sum of N daily buckets (:func:`window_counts`). Trends: per cluster, every
positive engagement (repeats included) per daily bucket.

Count keys of a partition's state (models/partition_state.py has the user and meta keys), each holding
``{"n": count, "s": batch sequence number of its last change}``:

* ``t:<c1>|<c2>|<c3>``: all-time transition count;
* ``d:<day>:<c1>|<c2>|<c3>``: transitions whose c3 engagement falls on ``day``;
* ``r:<day>:<cluster>``: positive engagements of ``cluster`` on ``day`` (trends).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DAY_S = 86_400

USER_PREFIX = "u:"
TOTAL_PREFIX = "t:"
DAILY_PREFIX = "d:"
TREND_PREFIX = "r:"
META_KEY = "m:"
SEP = "|"

Pair = tuple[str, str]
NextCounts = dict[str, int]
TransitionCounts = dict[Pair, NextCounts]


def day_of(ts: float) -> int:
    """The daily bucket of an event time: floor(ts / 86400)."""
    return math.floor(ts / DAY_S)


@dataclass(slots=True)
class AllCounts:
    """Counts merged over partitions. Zero counts are dropped, so two AllCounts compare equal iff the counts agree.

    total:  {(c1, c2): {c3: n}} all time
    daily:  {day: {(c1, c2): {c3: n}}} by the day of the c3 engagement
    trends: {day: {cluster: n}} positive engagements per cluster and day
    """

    total: TransitionCounts = field(default_factory=dict)
    daily: dict[int, TransitionCounts] = field(default_factory=dict)
    trends: dict[int, dict[str, int]] = field(default_factory=dict)

    def add_key(self, key: str, n: int) -> None:
        """Add ``n`` to the count a state key (``t:``, ``d:`` or ``r:``) stands for; other keys are ignored."""
        kind = key[:2]
        if kind == TOTAL_PREFIX:
            c1, c2, c3 = key[2:].split(SEP)
            _add3(self.total, c1, c2, c3, n)
        elif kind == DAILY_PREFIX:
            _, day, triple = key.split(":", 2)
            c1, c2, c3 = triple.split(SEP)
            _add3(self.daily.setdefault(int(day), {}), c1, c2, c3, n)
        elif kind == TREND_PREFIX:
            _, day, cluster = key.split(":", 2)
            row = self.trends.setdefault(int(day), {})
            row[cluster] = row.get(cluster, 0) + n


    def add_ref(self, ref: tuple, n: int) -> None:
        """Add ``n`` to the count a parsed ref stands for (models/transitions.CountRef): no string parsing."""
        kind = ref[0]
        if kind == "t":
            row = self.total.get(ref[1])
            if row is None:
                row = self.total[ref[1]] = {}
            row[ref[2]] = row.get(ref[2], 0) + n
        elif kind == "d":
            bucket = self.daily.get(ref[1])
            if bucket is None:
                bucket = self.daily[ref[1]] = {}
            row = bucket.get(ref[2])
            if row is None:
                row = bucket[ref[2]] = {}
            row[ref[3]] = row.get(ref[3], 0) + n
        else:
            row = self.trends.get(ref[1])
            if row is None:
                row = self.trends[ref[1]] = {}
            row[ref[2]] = row.get(ref[2], 0) + n


def is_count_key(key: str) -> bool:
    return key[:2] in (TOTAL_PREFIX, DAILY_PREFIX, TREND_PREFIX)


def pair_of_key(key: str) -> Pair | None:
    """The (c1, c2) of a transition key (``t:`` or ``d:``), None for any other key."""
    kind = key[:2]
    if kind == TOTAL_PREFIX:
        c1, c2, _ = key[2:].split(SEP)
    elif kind == DAILY_PREFIX:
        c1, c2, _ = key.rsplit(":", 1)[1].split(SEP)
    else:
        return None
    return c1, c2


def _add3(target: TransitionCounts, c1: str, c2: str, c3: str, n: int) -> None:
    row = target.get((c1, c2))
    if row is None:
        row = target[(c1, c2)] = {}
    row[c3] = row.get(c3, 0) + n


def _drop_zeros(counts: TransitionCounts) -> TransitionCounts:
    out: TransitionCounts = {}
    for pair, row in counts.items():
        kept = {c3: n for c3, n in row.items() if n}
        if kept:
            out[pair] = kept
    return out


def normalized(counts: AllCounts) -> AllCounts:
    """The same counts with every zero and every empty group removed."""
    daily = {day: d for day, d in ((day, _drop_zeros(t)) for day, t in counts.daily.items()) if d}
    trends = {
        day: r for day, r in ((day, {c: n for c, n in row.items() if n}) for day, row in counts.trends.items()) if r
    }
    return AllCounts(total=_drop_zeros(counts.total), daily=daily, trends=trends)


def read_counts(stores: Iterable[Mapping[str, Any]]) -> AllCounts:
    """Merge the per-partition stores (key -> value of the partition state) into one :class:`AllCounts`."""
    result = AllCounts()
    for store in stores:
        for key, value in store.items():
            if is_count_key(key):
                result.add_key(key, value["n"])
    return normalized(result)


def window_days_range(days: int, now_ts: float) -> range:
    """The daily buckets of the ``days`` window ending with ``now_ts``'s day."""
    if days < 1:
        raise ValueError(f"a window is at least one day, not {days}")
    last = day_of(now_ts)
    return range(last - days + 1, last + 1)


def window_counts(counts: AllCounts, days: int, now_ts: float) -> TransitionCounts:
    """Transitions in the last ``days`` daily buckets ending with the bucket of ``now_ts`` (event time).

    Buckets are whole days: the window is ``[day(now_ts) - days + 1, day(now_ts)]``, so it includes all of
    ``now_ts``'s own day.
    """
    out: TransitionCounts = {}
    for day in window_days_range(days, now_ts):
        bucket = counts.daily.get(day)
        if not bucket:
            continue
        for (c1, c2), row in bucket.items():
            for c3, n in row.items():
                _add3(out, c1, c2, c3, n)
    return _drop_zeros(out)


def window_trends(counts: AllCounts, days: int, now_ts: float) -> dict[str, int]:
    """Positive engagements per cluster in the same window as :func:`window_counts`."""
    out: dict[str, int] = {}
    for day in window_days_range(days, now_ts):
        for cluster, n in counts.trends.get(day, {}).items():
            out[cluster] = out.get(cluster, 0) + n
    return {c: n for c, n in out.items() if n}

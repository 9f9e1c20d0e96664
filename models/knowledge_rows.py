"""The rows one partition's counts become in the knowledge store (pure: no LanceDB here).

Windows: "all" (all-time) and "<N>d" for each N of ``Settings.window_days``; an "<N>d" window is the N daily buckets
ending with the bucket of ``as_of`` (the worker's latest event time), exactly as :func:`models.counts.window_counts`.

Trends, per cluster and "<N>d" window: ``count`` = positive engagements in the window; ``baseline`` = the mean count
of the ``history`` same-length windows just before it (fixed, so baselines of partitions simply add up; before there
is that much history the baseline is low and young clusters look like they trend). Read-time score:
``(count + 1) / (baseline + 1)`` after summing partitions (:func:`trend_score`).

:func:`partition_update` computes the rows one write must make true; :class:`PartitionRows` remembers what a writer last
wrote for a partition, so the next write sends only the rows that :func:`diff` finds changed or gone.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from models.counts import AllCounts, Pair, TransitionCounts, day_of, window_counts, window_days_range

ALL = "all"
TREND_HISTORY = 4

RowKey = tuple[str, str, str, str]  # c1, c2, c3, window
TrendKey = tuple[str, str]  # cluster, window
Trend = tuple[int, float]  # count, baseline
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def window_name(days: int) -> str:
    return f"{days}d"


def window_days_of(window: str) -> int | None:
    """None for "all", N for "<N>d"; ValueError otherwise."""
    if window == ALL:
        return None
    if window.endswith("d") and window[:-1].isdigit() and int(window[:-1]) >= 1:
        return int(window[:-1])
    raise ValueError(f"a window is {ALL!r} or '<days>d' such as '7d', not {window!r}")


def trend_score(count: int, baseline: float) -> float:
    return (count + 1) / (baseline + 1)


def _rows_of(counts: TransitionCounts, window: str, pairs: Collection[Pair] | None) -> Iterator[tuple[RowKey, int]]:
    for (c1, c2), row in counts.items():
        if pairs is None or (c1, c2) in pairs:
            yield from (((c1, c2, c3, window), n) for c3, n in row.items() if n)


def transition_rows(counts: AllCounts, as_of: float, window_days: Iterable[int],
                    pairs: Collection[Pair] | None = None) -> dict[RowKey, int]:
    """Counts for every window, only for ``pairs`` when given; zero counts produce no row."""
    rows = dict(_rows_of(counts.total, ALL, pairs))
    for days in window_days:
        rows.update(_rows_of(window_counts(counts, days, as_of), window_name(days), pairs))
    return rows


def trend_rows(counts: AllCounts, as_of: float, window_days: Iterable[int],
               history: int = TREND_HISTORY) -> dict[TrendKey, Trend]:
    """(count, baseline) per cluster and window, where either is non-zero. Days after ``as_of`` are ignored."""
    last = day_of(as_of)
    rows: dict[TrendKey, Trend] = {}
    for days in window_days:
        current: dict[str, int] = {}
        before: dict[str, int] = {}
        for day, per_cluster in counts.trends.items():
            age = (last - day) // days  # 0: this window, 1..history: the windows before it
            if age < 0 or age > history:
                continue
            target = current if age == 0 else before
            for cluster, n in per_cluster.items():
                target[cluster] = target.get(cluster, 0) + n
        for cluster in sorted(current.keys() | before.keys()):
            count, baseline = current.get(cluster, 0), before.get(cluster, 0) / history
            if count or baseline:
                rows[(cluster, window_name(days))] = (count, baseline)
    return rows


def diff(old: Mapping[K, V], new: Mapping[K, V]) -> tuple[dict[K, V], list[K]]:
    """(rows of ``new`` that are new or changed, keys of ``old`` that are gone)."""
    return {k: v for k, v in new.items() if old.get(k) != v}, [k for k in old if k not in new]


def pair_window_rows(counts: AllCounts, as_of: float, window_days: Iterable[int],
                     pairs: Iterable[Pair]) -> dict[RowKey, int]:
    """The day-window rows of ``pairs`` only: what :func:`window_counts` gives for them, without the other pairs."""
    rows: dict[RowKey, int] = {}
    for days in window_days:
        window = window_name(days)
        buckets = [bucket for day in window_days_range(days, as_of) if (bucket := counts.daily.get(day))]
        for pair in pairs:
            summed: dict[str, int] = {}
            for bucket in buckets:
                for c3, n in bucket.get(pair, {}).items():
                    summed[c3] = summed.get(c3, 0) + n
            rows.update(((pair[0], pair[1], c3, window), n) for c3, n in summed.items() if n)
    return rows


@dataclass
class PartitionUpdate:
    """The rows of one partition a write must make true, computed where the counts live (the worker's event loop)
    and written elsewhere (a LanceDB thread): "all"-window rows of ``pairs`` (every pair when ``pairs`` is None),
    day-window rows of ``window_pairs`` (every pair when None), and every trend row."""

    partition: int
    day: int
    pairs: frozenset[Pair] | None
    all_rows: dict[RowKey, int]
    window_rows: dict[RowKey, int]
    trends: dict[TrendKey, Trend]
    window_pairs: frozenset[Pair] | None = None


def partition_update(partition: int, counts: AllCounts, as_of: float, window_days: Iterable[int],
                     history: int = TREND_HISTORY, pairs: Collection[Pair] | None = None,
                     last_day: int | None = None) -> PartitionUpdate:
    """Rows for a write: the all-time rows only for the pairs that changed; the day-window rows too when the
    window has not moved since the last write (``last_day``, its day, is ``as_of``'s), and whole otherwise (a new
    day moves every pair's window: once a day, not every sync); trends whole (a row per cluster and window)."""
    window_days = tuple(window_days)
    scope = None if pairs is None else frozenset(pairs)
    day = day_of(as_of)
    window_scope = scope if last_day == day else None
    if window_scope is None:
        window_rows: dict[RowKey, int] = {}
        for days in window_days:
            window_rows.update(_rows_of(window_counts(counts, days, as_of), window_name(days), None))
    else:
        window_rows = pair_window_rows(counts, as_of, window_days, window_scope)
    return PartitionUpdate(partition, day, scope, dict(_rows_of(counts.total, ALL, scope)), window_rows,
                           trend_rows(counts, as_of, window_days, history), window_scope)


def _by_pair(rows: Mapping[RowKey, int]) -> dict[Pair, dict[RowKey, int]]:
    grouped: dict[Pair, dict[RowKey, int]] = {}
    for key, n in rows.items():
        grouped.setdefault((key[0], key[1]), {})[key] = n
    return grouped


@dataclass
class PartitionRows:
    """One partition's rows as this process last wrote them (a partition has one writer): the next write sends only
    the difference."""

    synced_at: float
    trends: dict[TrendKey, Trend]
    day: int | None = None  # the day its window rows end with
    all_by_pair: dict[Pair, dict[RowKey, int]] = field(default_factory=dict)
    windows_by_pair: dict[Pair, dict[RowKey, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, update: PartitionUpdate, synced_at: float) -> PartitionRows:
        rows = cls(synced_at, dict(update.trends))
        rows.record(update)
        return rows

    def all_rows(self, pairs: Collection[Pair] | None) -> dict[RowKey, int]:
        return self._rows(self.all_by_pair, pairs)

    def window_rows(self, pairs: Collection[Pair] | None) -> dict[RowKey, int]:
        return self._rows(self.windows_by_pair, pairs)

    @staticmethod
    def _rows(by_pair: dict[Pair, dict[RowKey, int]], pairs: Collection[Pair] | None) -> dict[RowKey, int]:
        groups = by_pair.values() if pairs is None else (by_pair.get(p, {}) for p in pairs)
        return {key: n for group in groups for key, n in group.items()}

    def replace(self, pairs: Collection[Pair] | None, all_rows: Mapping[RowKey, int]) -> None:
        """Record ``all_rows`` as the "all"-window rows of ``pairs`` (of every pair when None)."""
        self._replace(self.all_by_pair, pairs, all_rows)

    def record(self, update: PartitionUpdate) -> None:
        """Remember what a written ``update`` made true."""
        self._replace(self.all_by_pair, update.pairs, update.all_rows)
        self._replace(self.windows_by_pair, update.window_pairs, update.window_rows)
        self.trends = dict(update.trends)
        self.day = update.day

    @staticmethod
    def _replace(by_pair: dict[Pair, dict[RowKey, int]], pairs: Collection[Pair] | None,
                 rows: Mapping[RowKey, int]) -> None:
        if pairs is None:
            by_pair.clear()
        else:
            for pair in pairs:
                by_pair.pop(pair, None)
        for pair, group in _by_pair(rows).items():
            by_pair[pair] = group

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

from models.counts import AllCounts, Pair, TransitionCounts, day_of, window_counts

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


@dataclass
class PartitionUpdate:
    """The rows of one partition a write must make true, computed where the counts live (the worker's event loop)
    and written elsewhere (a LanceDB thread): "all"-window rows of ``pairs`` (every pair when ``pairs`` is None),
    and every row of the day windows and of the trends."""

    partition: int
    day: int
    pairs: frozenset[Pair] | None
    all_rows: dict[RowKey, int]
    window_rows: dict[RowKey, int]
    trends: dict[TrendKey, Trend]


def partition_update(partition: int, counts: AllCounts, as_of: float, window_days: Iterable[int],
                     history: int = TREND_HISTORY, pairs: Collection[Pair] | None = None) -> PartitionUpdate:
    """Rows for a write: day windows and trends are recomputed whole (they only span the last days, and move with
    every new day), the all-time rows only for the pairs that changed."""
    scope = None if pairs is None else frozenset(pairs)
    window_rows: dict[RowKey, int] = {}
    for days in window_days:
        window_rows.update(_rows_of(window_counts(counts, days, as_of), window_name(days), None))
    return PartitionUpdate(partition, day_of(as_of), scope, dict(_rows_of(counts.total, ALL, scope)), window_rows,
                           trend_rows(counts, as_of, window_days, history))


@dataclass
class PartitionRows:
    """One partition's rows as this process last wrote them (a partition has one writer): the next write sends only
    the difference."""

    synced_at: float
    windows: dict[RowKey, int]
    trends: dict[TrendKey, Trend]
    all_by_pair: dict[Pair, dict[RowKey, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, update: PartitionUpdate, synced_at: float) -> PartitionRows:
        rows = cls(synced_at, dict(update.window_rows), dict(update.trends))
        rows.replace(None, update.all_rows)
        return rows

    def all_rows(self, pairs: Collection[Pair] | None) -> dict[RowKey, int]:
        groups = self.all_by_pair.values() if pairs is None else (self.all_by_pair.get(p, {}) for p in pairs)
        return {key: n for group in groups for key, n in group.items()}

    def replace(self, pairs: Collection[Pair] | None, all_rows: Mapping[RowKey, int]) -> None:
        """Record ``all_rows`` as the "all"-window rows of ``pairs`` (of every pair when None)."""
        if pairs is None:
            self.all_by_pair = {}
        else:
            for pair in pairs:
                self.all_by_pair.pop(pair, None)
        for key, n in all_rows.items():
            self.all_by_pair.setdefault((key[0], key[1]), {})[key] = n

"""The straightforward, batch computation of transition and trend counts from raw data.

It states the contract (../shared/contract.md, "Cluster transitions") as directly as possible and is the oracle the
streaming partition state (models/partition_state.py) is tested against. It knows nothing about offsets, partitions or
lateness: give it the events the stream accepted (too-late events are dead-lettered by the stream, not counted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from models.counts import AllCounts, day_of, normalized
from streams.records import InteractionEvent
from streams.settings import Settings


def _as_event(item: Any) -> InteractionEvent:
    if isinstance(item, InteractionEvent):
        return item
    to_event = getattr(item, "to_event", None)  # streams.movielens.Rating
    if to_event is None:
        raise TypeError(f"expected an InteractionEvent or a Rating, got {type(item).__name__}")
    return to_event()


def reference_counts(
    ratings_or_events: Iterable[Any],
    cluster_of: Callable[[str], str | None],
    settings: Settings,
) -> AllCounts:
    """All-time, daily and trend counts of ``ratings_or_events`` (InteractionEvents or movielens Ratings).

    Events with an event_id seen before are duplicates and count once (the first one is kept).
    """
    seen: set[str] = set()
    per_user: dict[str, list[tuple[float, str, str]]] = {}
    for raw in ratings_or_events:
        event = _as_event(raw)
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        if not settings.is_positive(event.event_type, event.value):
            continue
        cluster = cluster_of(event.item_id)
        if cluster is None:
            continue
        per_user.setdefault(event.user_id, []).append((event.ts, event.event_id, cluster))

    counts = AllCounts()
    for engagements in per_user.values():
        engagements.sort(key=lambda e: (e[0], e[1]))
        collapsed: list[tuple[str, float]] = []  # (cluster, event time of the engagement that started the run)
        for ts, _event_id, cluster in engagements:
            trend = counts.trends.setdefault(day_of(ts), {})
            trend[cluster] = trend.get(cluster, 0) + 1
            if not collapsed or collapsed[-1][0] != cluster:
                collapsed.append((cluster, ts))
        for (c1, _), (c2, _), (c3, ts3) in zip(collapsed, collapsed[1:], collapsed[2:]):
            if len({c1, c2, c3}) < 3:
                continue
            for target in (counts.total, counts.daily.setdefault(day_of(ts3), {})):
                row = target.setdefault((c1, c2), {})
                row[c3] = row.get(c3, 0) + 1
    return normalized(counts)

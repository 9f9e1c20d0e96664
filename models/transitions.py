"""One user's interest-cluster transitions: what a positive engagement changes, as count deltas (pure functions).

The user's transition state (part of the user record, models/partition_state.py) is
``{"h": [[ts, event_id, cluster], ...], "p": [c, ...], "t": [c, ...], "f": [ts, event_id] | None}``:

* ``h``: the positive, known-cluster engagements with ``ts >= latest_ts - allowed_lateness_s``, sorted by
  ``(ts, event_id)`` (``latest_ts`` = ``h[-1][0]``) -- late events are inserted here, and the event ids are what
  recognises a re-sent duplicate; at most ``max_entries`` of them (older ones are pruned early past that);
* ``p``: the last (at most) two entries of the *collapsed* sequence of everything pruned out of ``h``: every
  accepted event sorts after all pruned engagements, so two collapsed predecessors are all a future transition or
  retraction can involve;
* ``t``: the last (at most) two entries of the collapsed sequence of the whole history (fast path for in-order
  events, and the recommender's "two latest distinct clusters");
* ``f``: the ``(ts, event_id)`` of the latest engagement pruned early by ``max_entries`` (None when none was): an
  event sorting before it cannot be placed any more and is too late, like one before the lateness horizon.

Late events: an event with ``ts >= latest_ts - allowed_lateness_s`` is inserted at its ``(ts, event_id)`` position.
Transitions over the kept history are recomputed before and after the insert and the difference is applied: a
transition that no longer exists is retracted (all-time and the day bucket it was counted in), new ones are added,
and a run whose first engagement moved keeps its all-time count but moves between day buckets. An event earlier
than the horizon is ``too_late``: it changes nothing and the caller dead-letters it with the reason.

Duplicates: an event whose ``(ts, event_id)`` is in ``h`` is a re-sent duplicate and changes nothing. One older than
the horizon is reported ``too_late`` (and changes nothing either, so counts are exact in both cases): remembering
every event id ever applied would make the user state unbounded. Re-consumed offsets are recognised earlier, by the
user record's source offsets (models/partition_state.py).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.counts import DAILY_PREFIX, SEP, TOTAL_PREFIX, TREND_PREFIX, day_of

APPLIED, DUPLICATE, TOO_LATE = "applied", "duplicate", "too_late"
NOT_POSITIVE, UNKNOWN_ITEM = "not_positive", "unknown_item"


# What a count key stands for, parsed once where the delta is made (the count index needs no string parsing):
# ("t", (c1, c2), c3) | ("d", day, (c1, c2), c3) | ("r", day, cluster)
CountRef = tuple
Delta = tuple[str, int, CountRef]  # (count key, delta, what the key stands for)


@dataclass(slots=True)
class Step:
    """What one positive engagement does to its user: the outcome, the user's new transition state (None when
    nothing changes) and the count deltas ``[(count key, delta, ref)]`` it implies."""

    outcome: str
    state: dict[str, Any] | None = None
    deltas: list[Delta] = field(default_factory=list)
    retractions: int = 0
    reason: str = ""


def empty_state() -> dict[str, Any]:
    return {"h": [], "p": [], "t": [], "f": None}


def check_cluster_id(cluster: Any) -> None:
    if not isinstance(cluster, str) or SEP in cluster or ":" in cluster or not cluster:
        raise ValueError(f"cluster ids must be non-empty strings without {SEP!r} or ':': {cluster!r}")


def engagement_step(state: Mapping[str, Any] | None, ts: float, event_id: str, cluster: str, lateness: float,
                    max_entries: int, user_id: str = "") -> Step:
    """The effect of a positive engagement of ``cluster`` at ``(ts, event_id)`` on a user in ``state`` (None: a
    user without positive engagements yet). Pure: ``state`` is never modified."""
    entry = [ts, event_id, cluster]
    day = day_of(ts)
    trend = (f"{TREND_PREFIX}{day}:{cluster}", 1, ("r", day, cluster))
    if state is None or not state["h"]:  # the user's first positive engagement (h is never empty after it)
        return Step(APPLIED, {"h": [entry], "p": [], "t": [cluster], "f": None}, [trend])
    history: list[list[Any]] = state["h"]
    last = history[-1]
    last_ts = last[0]
    if ts > last_ts or (ts == last_ts and event_id > last[1]):
        return _append(state, history, entry, lateness, max_entries, trend)
    if ts == last_ts and event_id == last[1]:
        return Step(DUPLICATE)
    if ts < last_ts - lateness:
        return _too_late(ts, last_ts, lateness, user_id)
    floor = state.get("f")
    if floor is not None and (ts, event_id) <= (floor[0], floor[1]):
        return _too_late(ts, last_ts, lateness, user_id, pruned=True)
    position = bisect_left(history, (ts, event_id), key=_entry_key)
    if position < len(history) and history[position][0] == ts and history[position][1] == event_id:
        return Step(DUPLICATE)
    return _insert(state, history, position, entry, trend)


def _too_late(ts: float, last_ts: float, lateness: float, user_id: str, pruned: bool = False) -> Step:
    why = ("sorts before engagements the user's bounded history no longer holds"
           if pruned else f"beyond allowed_lateness_s={lateness:g}")
    return Step(TOO_LATE, reason=(
        f"too_late: event time {ts} is {last_ts - ts:.0f}s before user {user_id}'s latest positive engagement "
        f"({last_ts}), {why}; its engagement is not counted (if this event was delivered before, it is a re-sent "
        "duplicate and nothing is lost)"))


def _entry_key(entry: list[Any]) -> tuple[float, str]:
    return entry[0], entry[1]


def _collapse_tail(tail: list[str], clusters: Iterable[str]) -> list[str]:
    """The last two entries of collapse(tail + clusters), as a new list."""
    out = list(tail)
    for c in clusters:
        if not out or out[-1] != c:
            out = [out[-1], c] if out else [c]
    return out


def _triples(prefix: list[str], history: list[list[Any]]) -> tuple[Counter[tuple[str, str, str, int]], list[str]]:
    """Transitions whose c3 comes from ``history`` as (c1, c2, c3, day) -> n, and the collapsed tail (<= 2)."""
    seq: list[str] = list(prefix)
    starts: list[float | None] = [None] * len(prefix)
    for ts, _eid, c in history:
        if seq and seq[-1] == c:
            continue
        seq.append(c)
        starts.append(ts)
    found: Counter[tuple[str, str, str, int]] = Counter()
    for i in range(2, len(seq)):
        start = starts[i]
        if start is None:
            continue
        c1, c3 = seq[i - 2], seq[i]
        if c1 != c3:  # c1 != c2 and c2 != c3 hold by collapsing
            found[(c1, seq[i - 1], c3, day_of(start))] += 1
    return found, seq[-2:]


def _append(state: Mapping[str, Any], history: list[list[Any]], entry: list[Any], lateness: float,
            max_entries: int, trend: Delta) -> Step:
    """The in-order fast path: at most one new transition, then prune the history to the new horizon."""
    ts, _eid, cluster = entry
    tail: list[str] = state["t"]
    deltas = [trend]
    if tail and tail[-1] == cluster:
        new_tail = tail
    else:
        if len(tail) == 2 and tail[0] != cluster:
            pair = (tail[0], tail[1])
            triple = f"{tail[0]}{SEP}{tail[1]}{SEP}{cluster}"
            day = trend[2][1]
            deltas.append((TOTAL_PREFIX + triple, 1, ("t", pair, cluster)))
            deltas.append((f"{DAILY_PREFIX}{day}:{triple}", 1, ("d", day, pair, cluster)))
        new_tail = [tail[-1], cluster] if tail else [cluster]
    horizon = ts - lateness
    n = len(history)
    cut = 0
    while cut < n and history[cut][0] < horizon:
        cut += 1
    floor = state.get("f")
    if n + 1 - cut > max_entries:  # a bounded record: prune the oldest early and remember where
        cut = n + 1 - max_entries
        floor = history[cut - 1][:2]
    prefix: list[str] = state["p"]
    if cut:
        prefix = _collapse_tail(prefix, (e[2] for e in history[:cut]))
        new_history = history[cut:]
        new_history.append(entry)
    else:
        new_history = history + [entry]
    return Step(APPLIED, {"h": new_history, "p": prefix, "t": new_tail, "f": floor}, deltas)


def _insert(state: Mapping[str, Any], history: list[list[Any]], position: int, entry: list[Any],
            trend: Delta) -> Step:
    """A late event inside the horizon: diff the transitions around the insert point before and after it.

    Let r0 be the run holding the entry before the insert point, R1 the run holding the entry after it (R1 is r0
    when the event lands inside a run) and R2 the next run. The new entry X either joins r0 (nothing changes),
    joins R1 (R1's start moves), splits r0 = R1 into Y X Y, or sits between two different runs. In every case
    the transitions that change have c3 in {X, R1, R2}, and their c1, c2 lie at most two runs back. So the
    diff covers the raw entries from the start of the run before r0 to the first entry of R2; every other
    transition keeps its three clusters and its c3 run start.
    """
    prefix: list[str] = state["p"]
    n = len(history)
    lo = position - 1
    if lo >= 0:
        cluster = history[lo][2]
        while lo > 0 and history[lo - 1][2] == cluster:  # the start of the run just before the insert point
            lo -= 1
        if lo > 0:  # ... and the start of the run before that one
            lo -= 1
            cluster = history[lo][2]
            while lo > 0 and history[lo - 1][2] == cluster:
                lo -= 1
    lo = max(lo, 0)
    hi = position + 1  # past the first entry of R2 (the first run start after the insert point)
    while hi < n and history[hi][2] == history[hi - 1][2]:
        hi += 1
    hi = min(hi + 1, n)
    context = prefix if lo == 0 else []  # a window starting mid-history starts at a run start
    before, _ = _triples(context, history[lo:hi])
    window = history[lo:position]
    window.append(entry)
    window.extend(history[position:hi])
    after, window_tail = _triples(context, window)
    after.subtract(before)
    deltas: list[Delta] = []
    total: Counter[tuple[str, str, str]] = Counter()
    retractions = 0
    for (c1, c2, c3, day), delta in after.items():
        if not delta:
            continue
        if delta < 0:
            retractions -= delta
        total[(c1, c2, c3)] += delta
        deltas.append((f"{DAILY_PREFIX}{day}:{c1}{SEP}{c2}{SEP}{c3}", delta, ("d", day, (c1, c2), c3)))
    deltas.extend((f"{TOTAL_PREFIX}{c1}{SEP}{c2}{SEP}{c3}", delta, ("t", (c1, c2), c3))
                  for (c1, c2, c3), delta in total.items() if delta)
    deltas.append(trend)
    new_history = history[:position]
    new_history.append(entry)
    new_history.extend(history[position:])
    # The window reaches the end of the history (and then holds >= 2 runs) or the last runs are untouched.
    new_tail = window_tail if hi == n else state["t"]
    # The latest engagement is unchanged, so the horizon did not move: nothing to prune.
    return Step(APPLIED, {"h": new_history, "p": prefix, "t": new_tail, "f": state.get("f")}, deltas, retractions)

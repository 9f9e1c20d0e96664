"""Interest-cluster transitions and trends, counted effectively exactly once over an at-least-once stream.

This module is pure (no Kafka, no Faust): the state lives in a plain ``MutableMapping`` per source partition. In
production that mapping is a Faust Table whose changelog partition is the source partition; in tests it is a dict.

What is counted (../shared/contract.md, "Cluster transitions")
----------------------------------------------------------------
Per user, the positive engagements in event-time order (ties broken by event_id) are mapped to interest clusters
(items without a cluster are skipped) and consecutive repeats are collapsed. Each run of three consecutive collapsed
entries ``(c1, c2, c3)`` with three distinct clusters is one transition ``(c1, c2) -> c3``, counted at the event time
of the engagement that produced ``c3`` (the first engagement of c3's run). Counts are kept all-time and per daily
bucket ``day = floor(ts / 86400)``; a rolling window "last N days" is the sum of N daily buckets
(:func:`window_counts`). Trends: per cluster, every positive engagement (repeats included) per daily bucket.

Failure model the design is built for
-------------------------------------
* Writes to the mapping go, in order, to one changelog partition. After a crash the recovered mapping equals the
  writes up to *some prefix* of that write sequence.
* The source partition is then re-consumed, in offset order, from a committed offset that is <= the offset of the
  first event whose writes did not all survive (Kafka at-least-once: an offset is committed only after the
  changelog writes of the events before it are acknowledged).
* ``cluster_of`` is a fixed function while a store is in use, and users are keyed to source partitions by user_id
  (a user's events all reach one partition, in order).

Key layout (every value a small JSON-able dict; every write is ``store[key] = fresh_value``, never an in-place edit)
-----------------------------------------------------------------------------------------------------------------------
* ``u:<user_id>`` -> ``{"offset": int, "h": [[ts, event_id, cluster], ...], "p": [c, ...], "t": [c, ...]}``
    - ``offset``: the source offset of the last event applied to this user;
    - ``h``: the user's positive, known-cluster engagements with ``ts >= latest_ts - allowed_lateness_s``, sorted by
      ``(ts, event_id)`` (``latest_ts`` = ``h[-1][0]``, the latest applied engagement). Late events are inserted here;
      the event ids are what recognises a re-sent duplicate;
    - ``p``: the last (at most) two entries of the *collapsed* sequence of everything pruned out of ``h``. Every
      accepted event sorts after all pruned engagements, so two collapsed predecessors are all a future transition
      or retraction can involve;
    - ``t``: the last (at most) two entries of the collapsed sequence of the whole history (fast path for in-order
      events: one comparison, no re-collapse).
* ``t:<c1>|<c2>|<c3>`` -> ``{"n": count, "offset": int}``: all-time transition count;
* ``d:<day>:<c1>|<c2>|<c3>`` -> ``{"n": count, "offset": int}``: transitions whose c3 engagement falls on ``day``;
* ``r:<day>:<cluster>`` -> ``{"n": count, "offset": int}``: positive engagements of ``cluster`` on ``day`` (trends).

One key per counter keeps every changelog record tiny (no re-serialising a dict of 40 neighbours per event). Cluster ids
must not contain ``|``. A count key is never deleted, even at zero: its ``offset`` is what makes a replay idempotent.
(Daily keys therefore accumulate, one set per day of data; they are small.)

Update order, and why it is exactly once
----------------------------------------
For an event at source offset ``o`` that changes counts: every count key it changes is written first, each only if
the key's stored ``offset < o`` (then with ``offset = o``); the user key is written last, with ``offset = o``.

* The user write is the event's last write, so if the recovered ``u:`` key has ``offset >= o``, all of the event's
  writes precede it in the ordered changelog and are durable: the event is skipped (``duplicate``).
* Otherwise the recovered user state is exactly the state before ``o`` (every earlier event of this user either
  survived, or is re-consumed first, because the restart offset is at or before the first lost event), so the event
  recomputes the very same deltas. Writes to one key happen in offset order, so a count key with ``offset >= o``
  already holds this event's change (or a later event's, which comes after it) and is left alone; one with
  ``offset < o`` does not, and gets it.
* Events that change nothing (not positive, unknown item, duplicate, too late) write nothing; re-processing them is
  trivially a no-op.

Late events, retractions
------------------------
An event with ``ts >= latest_ts - allowed_lateness_s`` (latest_ts: the user's latest applied positive engagement) is
inserted at its ``(ts, event_id)`` position. Transitions over the user's kept history are recomputed before and after
the insert and the difference is applied: a transition that no longer exists is retracted (all-time and the day
bucket it was counted in), new ones are added, and a run whose first engagement moved keeps its all-time count but
moves between day buckets. Collapsing is re-done on both sides of the insert. An event earlier than that horizon is
``too_late``: it changes nothing and the caller dead-letters it with the reason.

Duplicates (decision)
---------------------
* Same source offset re-consumed (crash replay): recognised by the user key's ``offset`` -> ``duplicate``.
* Same event_id re-sent at a *new* offset (a producer retry, a second replay of a data set): if the engagement is
  still inside the user's lateness horizon its ``(ts, event_id)`` is found in ``h`` -> ``duplicate``. If it is older
  than the horizon it is reported ``too_late`` - and changes nothing either way, so counts are exact in both cases
  (a whole data set replayed twice gives the same counts as once). We deliberately do NOT call every event at or
  before the user's latest ``(ts, event_id)`` a duplicate: every too-late event is at or before it, so that rule
  would silently drop genuinely late data instead of dead-lettering it. Remembering every event id ever applied
  would make the user state unbounded. The cost of the decision: a second replay of old data dead-letters its old
  events; the reason text says it may be a re-sent duplicate. Event ids are unique per event (contract), so a re-sent
  event has the same ts; a "duplicate" id with a different ts is treated as a different engagement.
* Non-positive events and events whose item has no cluster are ignored before any state is read (they are counted in
  :attr:`TransitionState.stats`, never dead-lettered).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streams.records import InteractionEvent
from streams.settings import Settings

if TYPE_CHECKING:
    from agents.ingest import SourcedEvent

DAY_S = 86_400

USER_PREFIX = "u:"
TOTAL_PREFIX = "t:"
DAILY_PREFIX = "d:"
TREND_PREFIX = "r:"
SEP = "|"

Pair = tuple[str, str]
NextCounts = dict[str, int]
TransitionCounts = dict[Pair, NextCounts]


def day_of(ts: float) -> int:
    """The daily bucket of an event time: floor(ts / 86400)."""
    return math.floor(ts / DAY_S)


# --------------------------------------------------------------------------------------------------------------------
# outcomes and statistics
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :meth:`TransitionState.apply` did with one event. ``reason`` is set for ``too_late``."""

    kind: str  # "applied" | "duplicate" | "not_positive" | "unknown_item" | "too_late"
    reason: str = ""

    @property
    def applied(self) -> bool:
        return self.kind == "applied"


APPLIED = Outcome("applied")
DUPLICATE = Outcome("duplicate")
NOT_POSITIVE = Outcome("not_positive")
UNKNOWN_ITEM = Outcome("unknown_item")
TOO_LATE = "too_late"


@dataclass(slots=True)
class TransitionStats:
    applied: int = 0
    duplicates: int = 0
    not_positive: int = 0
    unknown_item: int = 0
    too_late: int = 0
    retractions: int = 0  # transitions taken back by late events (each also re-added elsewhere, usually)

    def as_dict(self) -> dict[str, int]:
        return {
            "applied": self.applied,
            "duplicates": self.duplicates,
            "not_positive": self.not_positive,
            "unknown_item": self.unknown_item,
            "too_late": self.too_late,
            "retractions": self.retractions,
        }


# --------------------------------------------------------------------------------------------------------------------
# read side
# --------------------------------------------------------------------------------------------------------------------


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
    """Merge the per-partition stores into one :class:`AllCounts` (used by export and the knowledge store)."""
    result = AllCounts()
    for store in stores:
        for key, value in store.items():
            kind = key[:2]
            if kind == TOTAL_PREFIX:
                c1, c2, c3 = key[2:].split(SEP)
                _add3(result.total, c1, c2, c3, value["n"])
            elif kind == DAILY_PREFIX:
                _, day, triple = key.split(":", 2)
                c1, c2, c3 = triple.split(SEP)
                _add3(result.daily.setdefault(int(day), {}), c1, c2, c3, value["n"])
            elif kind == TREND_PREFIX:
                _, day, cluster = key.split(":", 2)
                row = result.trends.setdefault(int(day), {})
                row[cluster] = row.get(cluster, 0) + value["n"]
    return normalized(result)


def _window_days(days: int, now_ts: float) -> range:
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
    for day in _window_days(days, now_ts):
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
    for day in _window_days(days, now_ts):
        for cluster, n in counts.trends.get(day, {}).items():
            out[cluster] = out.get(cluster, 0) + n
    return {c: n for c, n in out.items() if n}


# --------------------------------------------------------------------------------------------------------------------
# write side
# --------------------------------------------------------------------------------------------------------------------


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


def _entry_key(entry: list[Any]) -> tuple[float, str]:
    return entry[0], entry[1]


class TransitionState:
    """Counts transitions and trends for ONE source partition into ``store`` (see the module docstring)."""

    def __init__(
        self,
        store: MutableMapping[str, Any],
        cluster_of: Callable[[str], str | None],
        settings: Settings,
    ) -> None:
        self.store = store
        self.cluster_of = cluster_of
        self.settings = settings
        self.lateness = float(settings.allowed_lateness_s)
        self.stats = TransitionStats()
        self._checked_clusters: set[str] = set()

    # ---------------------------------------------------------------------------------------------------------------
    def process_batch(self, batch: Sequence["SourcedEvent"]) -> list[tuple["SourcedEvent", str]]:
        """A BatchProcessor (agents/ingest.py): applies the partition-ordered batch, returns too-late events with the
        reason they should be dead-lettered with. All events must come from this state's partition."""
        failures: list[tuple[SourcedEvent, str]] = []
        apply = self.apply
        for sourced in batch:
            outcome = apply(sourced.event, sourced.offset)
            if outcome.kind == TOO_LATE:
                failures.append((sourced, outcome.reason))
        return failures

    # ---------------------------------------------------------------------------------------------------------------
    def apply(self, event: InteractionEvent, offset: int) -> Outcome:
        stats = self.stats
        if not self.settings.is_positive(event.event_type, event.value):
            stats.not_positive += 1
            return NOT_POSITIVE
        cluster = self.cluster_of(event.item_id)
        if cluster is None:
            stats.unknown_item += 1
            return UNKNOWN_ITEM
        if cluster not in self._checked_clusters:
            self._check_cluster(cluster)

        store = self.store
        user_key = USER_PREFIX + event.user_id
        user = store.get(user_key)
        ts = event.ts
        eid = event.event_id
        entry = [ts, eid, cluster]

        if user is None:
            # First engagement of this user: no transition possible yet.
            self._bump(TREND_PREFIX + f"{day_of(ts)}:{cluster}", 1, offset)
            store[user_key] = {"offset": offset, "h": [entry], "p": [], "t": [cluster]}
            stats.applied += 1
            return APPLIED

        if user["offset"] >= offset:
            stats.duplicates += 1
            return DUPLICATE

        history: list[list[Any]] = user["h"]
        last = history[-1]
        last_ts = last[0]
        if ts > last_ts or (ts == last_ts and eid > last[1]):
            self._append(user_key, user, history, entry, offset)
        elif ts == last_ts and eid == last[1]:
            stats.duplicates += 1
            return DUPLICATE
        else:
            horizon = last_ts - self.lateness
            if ts < horizon:
                stats.too_late += 1
                return Outcome(
                    TOO_LATE,
                    f"too_late: event time {ts} is {last_ts - ts:.0f}s before user {event.user_id}'s latest "
                    f"positive engagement ({last_ts}), beyond allowed_lateness_s={self.lateness:g}; its engagement "
                    "is not counted (if this event was delivered before, it is a re-sent duplicate and nothing "
                    "is lost)",
                )
            position = bisect_left(history, (ts, eid), key=_entry_key)
            if position < len(history) and history[position][0] == ts and history[position][1] == eid:
                stats.duplicates += 1
                return DUPLICATE
            self._insert(user_key, user, history, position, entry, offset)
        stats.applied += 1
        return APPLIED

    # ---------------------------------------------------------------------------------------------------------------
    def _append(
        self, user_key: str, user: Mapping[str, Any], history: list[list[Any]], entry: list[Any], offset: int
    ) -> None:
        """The in-order fast path: at most one new transition, then prune the history to the new horizon."""
        ts, _eid, cluster = entry
        tail: list[str] = user["t"]
        day = day_of(ts)
        bump = self._bump
        if tail and tail[-1] == cluster:
            new_tail = tail
        else:
            if len(tail) == 2 and tail[0] != cluster:
                triple = f"{tail[0]}{SEP}{tail[1]}{SEP}{cluster}"
                bump(TOTAL_PREFIX + triple, 1, offset)
                bump(f"{DAILY_PREFIX}{day}:{triple}", 1, offset)
            new_tail = [tail[-1], cluster] if tail else [cluster]
        bump(f"{TREND_PREFIX}{day}:{cluster}", 1, offset)

        prefix: list[str] = user["p"]
        horizon = ts - self.lateness
        cut = 0
        n = len(history)
        while cut < n and history[cut][0] < horizon:
            cut += 1
        if cut:
            prefix = _collapse_tail(prefix, (e[2] for e in history[:cut]))
            new_history = history[cut:]
            new_history.append(entry)
        else:
            new_history = history + [entry]
        self.store[user_key] = {"offset": offset, "h": new_history, "p": prefix, "t": new_tail}

    def _insert(
        self,
        user_key: str,
        user: Mapping[str, Any],
        history: list[list[Any]],
        position: int,
        entry: list[Any],
        offset: int,
    ) -> None:
        """A late event inside the horizon: diff the transitions around the insert point before and after it.

        Let r0 be the run holding the entry before the insert point, R1 the run holding the entry after it (R1 is r0
        when the event lands inside a run) and R2 the next run. The new entry X either joins r0 (nothing changes),
        joins R1 (R1's start moves), splits r0 = R1 into Y X Y, or sits between two different runs. In every case
        the transitions that change have c3 in {X, R1, R2}, and their c1, c2 lie at most two runs back. So the
        diff covers the raw entries from the start of the run before r0 to the first entry of R2; every other
        transition keeps its three clusters and its c3 run start.
        """
        prefix: list[str] = user["p"]
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
        total: Counter[str] = Counter()
        for (c1, c2, c3, day), delta in after.items():
            if not delta:
                continue
            if delta < 0:
                self.stats.retractions -= delta
            triple = f"{c1}{SEP}{c2}{SEP}{c3}"
            total[triple] += delta
            self._bump(f"{DAILY_PREFIX}{day}:{triple}", delta, offset)
        for triple, delta in total.items():
            if delta:
                self._bump(TOTAL_PREFIX + triple, delta, offset)
        self._bump(f"{TREND_PREFIX}{day_of(entry[0])}:{entry[2]}", 1, offset)
        new_history = history[:position]
        new_history.append(entry)
        new_history.extend(history[position:])
        # The window reaches the end of the history (and then holds >= 2 runs) or the last runs are untouched.
        new_tail = window_tail if hi == n else user["t"]
        # The latest engagement is unchanged, so the horizon did not move: nothing to prune.
        self.store[user_key] = {"offset": offset, "h": new_history, "p": prefix, "t": new_tail}

    def _bump(self, key: str, delta: int, offset: int) -> None:
        """Add ``delta`` to a counter unless this source offset was already applied to it (a replay)."""
        store = self.store
        current = store.get(key)
        if current is None:
            store[key] = {"n": delta, "offset": offset}
        elif current["offset"] < offset:
            store[key] = {"n": current["n"] + delta, "offset": offset}

    def _check_cluster(self, cluster: str) -> None:
        if not isinstance(cluster, str) or SEP in cluster or not cluster:
            raise ValueError(f"cluster ids must be non-empty strings without {SEP!r}: {cluster!r}")
        self._checked_clusters.add(cluster)


class PartitionedTransitions:
    """A BatchProcessor over several source partitions: one :class:`TransitionState` (and one store) per partition.

    ``store_for(partition)`` returns that partition's mapping; events are routed by ``SourcedEvent.partition`` and
    keep their order within each partition.
    """

    def __init__(
        self,
        store_for: Callable[[int], MutableMapping[str, Any]],
        cluster_of: Callable[[str], str | None],
        settings: Settings,
    ) -> None:
        self.store_for = store_for
        self.cluster_of = cluster_of
        self.settings = settings
        self.states: dict[int, TransitionState] = {}

    def state(self, partition: int) -> TransitionState:
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = TransitionState(self.store_for(partition), self.cluster_of, self.settings)
        return state

    def __call__(self, batch: Sequence["SourcedEvent"]) -> list[tuple["SourcedEvent", str]]:
        return self.process_batch(batch)

    def process_batch(self, batch: Sequence["SourcedEvent"]) -> list[tuple["SourcedEvent", str]]:
        failures: list[tuple[SourcedEvent, str]] = []
        for sourced in batch:
            outcome = self.state(sourced.partition).apply(sourced.event, sourced.offset)
            if outcome.kind == TOO_LATE:
                failures.append((sourced, outcome.reason))
        return failures

    @property
    def stats(self) -> TransitionStats:
        merged = TransitionStats()
        for state in self.states.values():
            for name, value in state.stats.as_dict().items():
                setattr(merged, name, getattr(merged, name) + value)
        return merged

"""The state of one source partition -- its users and their counts -- kept exact over at-least-once delivery.

Pure (no Kafka, no Faust): the state lives in a ``MutableMapping`` (in production the partition's slice of a Faust
table, in tests a dict), and every batch returns the ordered writes its changelog partition must receive.

Keys
----
* ``u:<user_id>`` -> the user record ``{"o": {source: offset}, "h", "p", "t", "f" (models/transitions.py),
  "i": [item_id, ...] (recent items, oldest first), "n": positive engagements, "pend": [seq, {count key: delta}]}``;
* count keys ``t:``, ``d:``, ``r:`` -> ``{"n": count, "s": seq}`` (models/counts.py);
* ``m:`` -> ``{"s": seq, "w": watermark, "u": [user keys of batch seq]}``.

A partition's events come from up to two sources, each read in offset order: the ``interactions`` partition itself
(``DIRECT``) and the ``interactions.repartition`` partition (``REROUTED``, records a producer put on another
partition, forwarded here). A user record keeps the last offset applied from each source.

The batch protocol, and why counts are exact
--------------------------------------------
Batch number ``s`` (one fetched run of one source) changes user records and count keys in memory; its changelog
writes go out in this order: the meta key (``s``, the users of the batch), every changed user record carrying its
own count deltas of the batch (``pend = [s, deltas]``), then every changed count key (tagged ``s``). The worker
acks the batch's source offsets only once all of them are delivered, so after a crash

* the recovered state is a prefix of the writes (one changelog partition, an idempotent producer), and
* each source is re-consumed from a committed offset at or before the first event of every batch not wholly
  delivered.

:meth:`PartitionState.recover` then finishes the one batch that can be half-durable, the batch ``s`` of the
recovered meta key: its users whose record survived carry their deltas, and every count key still older than ``s``
gets the sum of those deltas (a count key that survived already holds them all: it was written after every user
record). So each user is either wholly applied with its batch or not at all, and its events are then re-applied,
from exactly the user's state before them, whatever order the two sources are re-read in. An event already applied
is recognised by its source offset in the user record (``duplicate``); a re-sent copy at a new offset by its
``(ts, event_id)`` in the user's history (models/transitions.py).

Nothing here is lost silently: an event too late to place is returned as a failure with the reason (the caller
dead-letters it), and one whose processing raises changes nothing (per-event atomic) and is returned likewise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.counts import META_KEY, USER_PREFIX, AllCounts, Pair, is_count_key
from models.transitions import (
    APPLIED,
    DUPLICATE,
    NOT_POSITIVE,
    TOO_LATE,
    UNKNOWN_ITEM,
    Delta,
    check_cluster_id,
    engagement_step,
)
from streams.records import SourcedEvent
from streams.settings import Settings

DIRECT, REROUTED = "i", "r"
PROCESSING_ERROR = "processing_error"
Write = tuple[str, Any]


@dataclass(slots=True)
class TransitionStats:
    applied: int = 0
    duplicates: int = 0
    not_positive: int = 0
    unknown_item: int = 0
    too_late: int = 0
    processing_errors: int = 0
    retractions: int = 0  # transitions taken back by late events (each also re-added elsewhere, usually)

    def as_dict(self) -> dict[str, int]:
        return {"applied": self.applied, "duplicates": self.duplicates, "not_positive": self.not_positive,
                "unknown_item": self.unknown_item, "too_late": self.too_late,
                "processing_errors": self.processing_errors, "retractions": self.retractions}

    def add(self, other: TransitionStats) -> None:
        for name, value in other.as_dict().items():
            setattr(self, name, getattr(self, name) + value)


@dataclass(slots=True)
class BatchResult:
    """What a batch did: the events to dead-letter with their reason, the events that made an automatic
    recommendation request due, and the ordered changelog writes."""

    failures: list[tuple[SourcedEvent, str]] = field(default_factory=list)
    requests_due: list[SourcedEvent] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)


class PartitionState:
    """One source partition's users and counts over ``store`` (see the module docstring)."""

    def __init__(self, store: MutableMapping[str, Any], cluster_of: Callable[[str], str | None], settings: Settings,
                 *, max_history_entries: int | None = None) -> None:
        self.store = store
        self.cluster_of = cluster_of
        self.settings = settings
        self.lateness = float(settings.allowed_lateness_s)
        self.max_entries = max_history_entries or settings.transitions_max_history_entries
        self.items_kept = settings.recent_items_kept
        self.auto_every = settings.auto_request_every
        self.stats = TransitionStats()
        self.seq = 0  # the last batch number whose writes were handed out
        self.watermark = 0.0  # latest event time applied: the end of the rolling windows
        self.counts = AllCounts()  # every count of the partition, kept in step with the count keys
        # For the knowledge sync: what changed since it last looked (it clears these).
        self.changed_pairs: set[Pair] = set()
        self.trends_changed = False
        self._checked_clusters: set[str] = set()
        self._resolved: dict[str, Any] = {}  # count keys finished by recover(), to write before the next batch
        self._batch_users: dict[str, dict[str, int]] = {}  # user key -> its count deltas in the open batch
        self._batch_counts: set[str] = set()
        self._recovered = False

    # ------------------------------------------------------------------------------------------------ lifecycle
    def recover(self) -> None:
        """Finish the batch the last crash may have left half-durable, then index the counts (call once, after the
        store holds the recovered changelog and before the first batch)."""
        meta = self.store.get(META_KEY)
        if meta is not None:
            self.seq, self.watermark = int(meta["s"]), float(meta["w"])
            sums: dict[str, int] = {}
            for user_key in meta["u"]:
                user = self.store.get(user_key)
                pend = user.get("pend") if user else None
                if pend and pend[0] == self.seq:
                    for key, delta in pend[1].items():
                        sums[key] = sums.get(key, 0) + delta
            for key, delta in sums.items():
                current = self.store.get(key)
                if current is None or current["s"] < self.seq:
                    value = {"n": (current["n"] if current else 0) + delta, "s": self.seq}
                    self.store[key] = value
                    # A copy: the store's value changes in place with the next batch, but these writes must
                    # carry exactly the finished batch (they go out before the next batch's meta key).
                    self._resolved[key] = dict(value)
        counts = AllCounts()
        for key, value in self.store.items():
            if is_count_key(key):
                counts.add_key(key, value["n"])
        self.counts = counts
        self.changed_pairs = set(counts.total)
        for bucket in counts.daily.values():
            self.changed_pairs.update(bucket)
        self.trends_changed = True
        self._recovered = True

    @property
    def recovered(self) -> bool:
        return self._recovered

    def user(self, user_id: str) -> Mapping[str, Any] | None:
        return self.store.get(USER_PREFIX + user_id)

    # ------------------------------------------------------------------------------------------------ batches
    def apply_events(self, events: Sequence[SourcedEvent], result: BatchResult) -> tuple[int, Exception | None]:
        """Apply `events` in order into the open batch until one raises; returns how many were applied and the error
        of the next one (which changed nothing: events are applied whole or not at all). Too-late events join
        `result.failures`. The caller retries the failing event (agents/ingest.py) or records it with
        :meth:`record_error`, goes on with the rest, and ends the batch with :meth:`finish`."""
        for done, sourced in enumerate(events):
            try:
                outcome, reason = self._apply(sourced, result)
            except Exception as exc:
                return done, exc
            if outcome == TOO_LATE:
                result.failures.append((sourced, reason))
        return len(events), None

    def record_error(self, result: BatchResult, sourced: SourcedEvent, error: Exception) -> None:
        """Give up on an event whose processing keeps raising: it goes to the dead letters with the reason."""
        self.stats.processing_errors += 1
        result.failures.append((sourced, f"{PROCESSING_ERROR}: {type(error).__name__}: {error}"))

    def apply_batch(self, events: Sequence[SourcedEvent]) -> BatchResult:
        """Apply one source-ordered batch without retries (an event that raises is dead-lettered at once) and
        return what to dead-letter and what to write, in that order."""
        result = BatchResult()
        rest = list(events)
        while rest:
            done, error = self.apply_events(rest, result)
            if error is None:
                break
            self.record_error(result, rest[done], error)
            rest = rest[done + 1:]
        result.writes = self.finish()
        return result

    def apply(self, sourced: SourcedEvent) -> str:
        """Apply one event as its own batch (tests and tools); returns the outcome kind. Writes stay pending for
        the next :meth:`finish`."""
        return self._apply(sourced, BatchResult())[0]

    def finish(self) -> list[Write]:
        """The ordered changelog writes of everything applied since the last call (see the module docstring)."""
        writes: list[Write] = list(self._resolved.items())
        self._resolved = {}
        if self._batch_users:
            seq = self.seq + 1
            store = self.store
            meta = {"s": seq, "w": self.watermark, "u": list(self._batch_users)}
            store[META_KEY] = meta
            writes.append((META_KEY, meta))
            for user_key, deltas in self._batch_users.items():
                record = store[user_key]
                record["pend"] = [seq, deltas]
                writes.append((user_key, record))
            writes.extend((key, store[key]) for key in self._batch_counts)  # already tagged with seq
            self.seq = seq
            self._batch_users = {}
            self._batch_counts = set()
        return writes

    # ------------------------------------------------------------------------------------------------ one event
    def _apply(self, sourced: SourcedEvent, result: BatchResult) -> tuple[str, str]:
        if not self._recovered:
            raise RuntimeError("PartitionState.recover() must run before the first event")
        event = sourced.event
        store = self.store
        user_key = USER_PREFIX + event.user_id
        user = store.get(user_key)
        offsets: dict[str, int] = user["o"] if user else {}
        if offsets.get(sourced.source, -1) >= sourced.offset:
            self.stats.duplicates += 1
            return DUPLICATE, ""
        positive = self.settings.is_positive(event.event_type, event.value)
        step = None
        kind = NOT_POSITIVE
        if positive:
            cluster = self.cluster_of(event.item_id)
            if cluster is None:
                kind = UNKNOWN_ITEM
            else:
                if cluster not in self._checked_clusters:
                    check_cluster_id(cluster)
                    self._checked_clusters.add(cluster)
                step = engagement_step(user, event.ts, event.event_id, cluster, self.lateness, self.max_entries,
                                       event.user_id)
                if step.outcome == TOO_LATE:
                    self.stats.too_late += 1
                    return TOO_LATE, step.reason
                if step.outcome == DUPLICATE:
                    self.stats.duplicates += 1
                    return DUPLICATE, ""
                kind = APPLIED
        # Everything is computed: from here on the event is applied whole (nothing below raises on valid input).
        # Values are changed in place: the changelog gets them encoded at the batch's end (finish()).
        if user is None:
            user = store[user_key] = {"o": {}, "h": [], "p": [], "t": [], "f": None, "i": [], "n": 0}
        user["o"][sourced.source] = sourced.offset
        if step is not None:
            user.update(step.state)  # type: ignore[arg-type]
        items: list[str] = user["i"]
        if event.item_id in items:  # a re-engagement moves up
            items.remove(event.item_id)
        items.append(event.item_id)
        if len(items) > self.items_kept:
            del items[: len(items) - self.items_kept]
        positives = user["n"] = user["n"] + positive
        user_deltas = self._batch_users.get(user_key)
        if user_deltas is None:
            user_deltas = self._batch_users[user_key] = {}
        if step is not None:
            self._commit_deltas(step.deltas, user_deltas)
            self.stats.retractions += step.retractions
        if event.ts > self.watermark:
            self.watermark = event.ts
        if positive and self.auto_every and positives % self.auto_every == 0:
            result.requests_due.append(sourced)
        if kind == APPLIED:
            self.stats.applied += 1
        elif kind == NOT_POSITIVE:
            self.stats.not_positive += 1
        else:
            self.stats.unknown_item += 1
        return kind, ""

    def _commit_deltas(self, deltas: list[Delta], user_deltas: dict[str, int]) -> None:
        store = self.store
        seq = self.seq + 1
        counts = self.counts
        touched = self._batch_counts
        for key, delta, ref in deltas:
            current = store.get(key)
            if current is None:
                store[key] = {"n": delta, "s": seq}
            else:
                current["n"] += delta
                current["s"] = seq
            touched.add(key)
            user_deltas[key] = user_deltas.get(key, 0) + delta
            counts.add_ref(ref, delta)
            if ref[0] == "r":
                self.trends_changed = True
            else:
                self.changed_pairs.add(ref[1] if ref[0] == "t" else ref[2])

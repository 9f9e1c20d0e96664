"""The transitions agent: counts interest-cluster transitions and trends exactly once, on top of the ingest agent.

It is a batch processor of the ingest agent (same stream, same partitions: state is partitioned by user because
`interactions` is keyed by user_id). The state of source partition p lives under keys "p/..." of one Faust Table
whose changelog partition p receives exactly those keys, in write order — the property models.transitions relies
on for exactly-once counts over Faust's at-least-once delivery (see its module docstring).

The table is named after the clusters version: rebuilding clusters gives a new table (and changelog topic), filled
by a backfill from the retained `interactions` topic while the old one keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.transitions import DAILY_PREFIX, SEP, TOTAL_PREFIX, USER_PREFIX, PartitionedTransitions

if TYPE_CHECKING:
    import faust

    from agents.ingest import SourcedEvent
    from models.clusters import ClusterSet
    from streams.app import AppContext

log = logging.getLogger(__name__)


def state_table_name(clusters_version: str) -> str:
    return f"transitions-{clusters_version}"


def changelog_topic_name(group: str, clusters_version: str) -> str:
    """Faust's name for the table's changelog (group = the app id, streams.app.consumer_group): where the durable
    state lives, read by `explorer knowledge export`."""
    return f"{group}-{state_table_name(clusters_version)}-changelog"


def partition_key(partition: int, key: str) -> str:
    return f"{partition}/{key}"


class PartitionStore(MutableMapping[str, Any]):
    """One source partition's view of the table: reads and writes hit the local table data at once; changelog
    records are coalesced per key and sent by `flush()`, pinned to that partition's changelog partition.

    Faust's own `table[key] = value` picks the partition of the *current event*, which in a batch that mixes
    partitions is not the event being applied, hence `send_changelog` with an explicit partition. Coalescing keeps
    one record per key per batch (hot keys such as a cluster's daily trend are written once, not per event). The
    flush sends every count key before any user key: a recovered user key then still implies that all the count
    writes of its events are durable, which is what models.transitions needs for exactly-once counts.
    """

    def __init__(self, table: "faust.Table", partition: int) -> None:
        self._table = table
        self._data = table.data
        self._partition = partition
        self._prefix = f"{partition}/"
        self._pending: dict[str, Any] = {}
        self.changed_since_sync = False  # set on every write; cleared by the knowledge sync
        self.changed_pairs: set[tuple[str, str]] = set()  # (c1, c2) whose counts changed since the last sync
        self.latest_ts = 0.0  # latest event time seen on this partition: the end of the rolling windows

    def __getitem__(self, key: str) -> Any:
        return self._data[self._prefix + key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[self._prefix + key] = value
        self._pending[key] = value
        self.changed_since_sync = True

    def __delitem__(self, key: str) -> None:
        del self._data[self._prefix + key]
        self._pending[key] = None

    def __iter__(self) -> Iterator[str]:
        prefix, size = self._prefix, len(self._prefix)
        return (key[size:] for key in list(self._data.keys()) if key.startswith(prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    async def flush(self) -> int:
        """Send the coalesced changelog records (count keys first, user keys last); returns how many.

        Each record is awaited into the producer (`Topic.send`), not queued with `send_soon`: Faust's buffer flush
        gives up after 0.1 s with records still queued, so a commit could cover events whose records never left
        the process (a SIGKILL then loses them). Once in aiokafka's accumulator, the flush Faust runs before
        every commit waits for their delivery.
        """
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        for key in pending:
            # "t:c1|c2|c3" and "d:<day>:c1|c2|c3" (a late event can move a transition between days alone)
            if key.startswith(TOTAL_PREFIX):
                c1, c2, _ = key[len(TOTAL_PREFIX):].split(SEP)
                self.changed_pairs.add((c1, c2))
            elif key.startswith(DAILY_PREFIX):
                c1, c2, _ = key.rsplit(":", 1)[1].split(SEP)
                self.changed_pairs.add((c1, c2))
        ordered = sorted(pending.items(), key=lambda item: item[0].startswith(USER_PREFIX))  # stable: False first
        topic = self._table.changelog_topic
        for key, value in ordered:
            await topic.send(
                key=self._prefix + key,
                value=value,
                partition=self._partition,
                key_serializer=self._table.key_serializer,
                value_serializer="raw" if value is None else self._table.value_serializer,
            )
        return len(ordered)


@dataclass
class TransitionsRuntime:
    """What the transitions agent leaves for other agents (the knowledge sync): the processor and its stores."""

    processor: PartitionedTransitions
    stores: dict[int, PartitionStore]


def register(app: "faust.App", context: "AppContext", clusters: "ClusterSet") -> TransitionsRuntime:
    """Add the transitions processor (state of `clusters`' version) to the ingest agent."""
    settings = context.settings
    table = app.Table(
        state_table_name(clusters.version),
        default=None,
        partitions=settings.interactions_partitions,
        key_type=str,  # with the app's raw key codec: UTF-8 on the wire, str again on recovery
        help="Per-partition transition and trend state (see models.transitions)",
    )
    stores: dict[int, PartitionStore] = {}

    def store_for(partition: int) -> PartitionStore:
        store = stores.get(partition)
        if store is None:
            store = stores[partition] = PartitionStore(table, partition)
        return store

    processor = PartitionedTransitions(store_for, clusters.cluster_of, settings)

    async def process_and_flush(batch: "Sequence[SourcedEvent]") -> "list[tuple[SourcedEvent, str]]":
        # The flush completes before the ingest agent acks the batch, so Faust's commit (after a producer flush)
        # never covers an event whose changelog records were not handed to the producer.
        try:
            return processor(batch)
        finally:
            for sourced in batch:
                store = store_for(sourced.partition)
                if sourced.event.ts > store.latest_ts:
                    store.latest_ts = sourced.event.ts
            for store in list(stores.values()):
                await store.flush()

    context.processors.append(process_and_flush)
    context.clusters_version = clusters.version

    @app.timer(2.0)
    async def report_transition_stats() -> None:
        for outcome, value in processor.stats.as_dict().items():
            context.metrics.transition_events.labels(outcome).set(value)

    return TransitionsRuntime(processor, stores)

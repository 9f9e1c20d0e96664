"""The worker's partition state: one Faust table (changelog partition p holds source partition p's keys) and a
`PartitionState` per assigned partition on top of it.

The table gives what Faust is good at -- the changelog topic, recovery of a partition's keys on assignment, standby
bookkeeping -- while writes bypass `table[key] = value`: Faust would pick the changelog partition from the *current
event*, and it sends one record at a time. Each batch's writes (models/partition_state.py, in protocol order) are
encoded here and go to the changelog partition of their source partition through the agent's outbox.

A `PartitionState` is made (and `recover()`ed) on first use after the partition was assigned, i.e. after Faust's
recovery filled its keys: Faust resumes a partition's source topics only once its tables are recovered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson
from faust.types import TP

from models.partition_state import PartitionState, TransitionStats, Write
from streams.topics import STATE_FORMAT, changelog_topic_name, state_table_name  # noqa: F401  (named here too)

if TYPE_CHECKING:
    import faust

    from streams.settings import Settings

log = logging.getLogger(__name__)

class PartitionView(MutableMapping[str, Any]):
    """Source partition p's keys of the table data, without their "p/" prefix."""

    __slots__ = ("_data", "_prefix")

    def __init__(self, data: dict[str, Any], partition: int) -> None:
        self._data = data
        self._prefix = f"{partition}/"

    def __getitem__(self, key: str) -> Any:
        return self._data[self._prefix + key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(self._prefix + key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[self._prefix + key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        prefix, size = self._prefix, len(self._prefix)
        return (key[size:] for key in list(self._data) if key.startswith(prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def drop_all(self) -> int:
        keys = [key for key in self._data if key.startswith(self._prefix)]
        for key in keys:
            del self._data[key]
        return len(keys)


class StateTable:
    """The table and the partition states of this worker.

    With the memory store (`state_store = "memory"`) a partition's state works directly on the table's data, which
    Faust's recovery fills from the whole changelog at every assignment. With RocksDB (the default) the table keeps
    every delivered write on local disk with the changelog offset it reached, so a restarted or reassigned worker
    reads only the changelog's tail; the partition state then works on a plain dict loaded from it, and each
    batch's writes reach RocksDB -- in order, per partition -- once the changelog has them (RocksDB is a cache of
    the changelog, never ahead of it).
    """

    def __init__(self, app: faust.App, settings: Settings, clusters_version: str,
                 cluster_of: Callable[[str], str | None]) -> None:
        self.settings = settings
        self.cluster_of = cluster_of
        self.durable = settings.state_store == "rocksdb"
        name = state_table_name(clusters_version)
        # "rocksdb:<name>", not "rocksdb://": Faust falls back to the app's store when the table's URL is falsy, as
        # yarl's URL("rocksdb://") is; the URL's path names the files (<tabledir>/<name>-<partition>.db).
        store = {"store": f"rocksdb:{name}", "options": {"driver": "rocksdict"}} if self.durable else {}
        self.table = app.Table(name, default=None,
                               partitions=settings.interactions_partitions, key_type=str,
                               help="Users and transition/trend counts per source partition "
                                    "(models/partition_state.py)", **store)
        self._states: dict[int, PartitionState] = {}
        self._retired = TransitionStats()  # stats of partitions this worker no longer holds
        self._persisting: dict[int, asyncio.Task] = {}  # the last RocksDB write of each partition

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def partition(self, partition: int) -> PartitionState:
        state = self._states.get(partition)
        if state is None:
            started = time.monotonic()
            store = self._load(partition) if self.durable else PartitionView(self.table.data.data, partition)
            state = PartitionState(store, self.cluster_of, self.settings)
            state.recover()
            self._states[partition] = state
            log.info("partition %d state ready in %.2fs: %d keys, batch %d, watermark %s", partition,
                     time.monotonic() - started, len(store), state.seq, state.watermark)
        return state

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def _load(self, partition: int) -> dict[str, Any]:
        """Partition p's keys from RocksDB (Faust's recovery has brought them up to the changelog's end)."""
        prefix = f"{partition}/"
        size = len(prefix)
        loads = orjson.loads
        data: dict[str, Any] = {}
        offset_key = self.table.data.offset_key
        for raw_key, raw_value in self._db(partition).items():
            if raw_key == offset_key or raw_value is None:
                continue
            key = loads(raw_key)
            if key.startswith(prefix):
                data[key[size:]] = loads(raw_value)
        return data

    def persist(self, partition: int, records: list[tuple[bytes, bytes | None]],
                delivered: Callable[[], Awaitable[int | None]]) -> None:
        """After `delivered()` (the changelog offset of the last of `records`), write them to RocksDB, after any
        earlier batch of the partition. No-op with the memory store."""
        if not self.durable or not records:
            return
        previous = self._persisting.get(partition)

        async def write() -> None:
            if previous is not None:
                await asyncio.shield(previous)
            last = await delivered()
            if last is None or partition not in self._states:  # revoked meanwhile: the next owner recovers
                return
            from rocksdict import WriteBatch

            batch = WriteBatch(raw_mode=True)
            for key, value in records:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            self._db(partition).write(batch)
            self.table.data.set_persisted_offset(TP(self.changelog_topic, partition), last)

        task = asyncio.get_running_loop().create_task(write())
        task.add_done_callback(lambda t: t.cancelled() or t.exception() and log.error(
            "writing partition %d's batch to RocksDB failed (a restart reads more of the changelog): %r",
            partition, t.exception()))
        self._persisting[partition] = task

    async def drain(self) -> None:
        for task in list(self._persisting.values()):
            await asyncio.gather(task, return_exceptions=True)

    def held(self) -> dict[int, PartitionState]:
        return dict(self._states)

    def release(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: forget their state (a later assignment recovers it again from the changelog)."""
        for partition in partitions:
            state = self._states.pop(partition, None)
            if state is not None:
                self._retired.add(state.stats)
            if not self.durable:
                PartitionView(self.table.data.data, partition).drop_all()

    def stats(self) -> TransitionStats:
        merged = TransitionStats()
        merged.add(self._retired)
        for state in self._states.values():
            merged.add(state.stats)
        return merged

    @staticmethod
    def encode(partition: int, writes: Iterable[Write]) -> list[tuple[bytes, bytes | None]]:
        """Changelog records of one partition's writes: JSON keys "p/<key>" and JSON values, as Faust's table
        codecs (key_type=str, json values) decode them on recovery."""
        prefix = f"{partition}/"
        dumps = orjson.dumps
        return [(dumps(prefix + key), None if value is None else dumps(value)) for key, value in writes]

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

import logging
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

from models.partition_state import PartitionState, TransitionStats, Write

if TYPE_CHECKING:
    import faust

    from streams.settings import Settings

log = logging.getLogger(__name__)

STATE_FORMAT = "v2"  # the user/count/meta layout of models/partition_state.py; older changelogs are not read


def state_table_name(clusters_version: str) -> str:
    return f"state-{STATE_FORMAT}-{clusters_version}"


def changelog_topic_name(group: str, clusters_version: str) -> str:
    """Faust's name for the table's changelog (group = the app id, streams.app.consumer_group): where the durable
    state lives, read by `explorer knowledge export`."""
    return f"{group}-{state_table_name(clusters_version)}-changelog"


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
    """The table and the partition states of this worker."""

    def __init__(self, app: faust.App, settings: Settings, clusters_version: str,
                 cluster_of: Callable[[str], str | None]) -> None:
        self.settings = settings
        self.cluster_of = cluster_of
        self.table = app.Table(state_table_name(clusters_version), default=None,
                               partitions=settings.interactions_partitions, key_type=str,
                               help="Users and transition/trend counts per source partition "
                                    "(models/partition_state.py)")
        self._states: dict[int, PartitionState] = {}
        self._retired = TransitionStats()  # stats of partitions this worker no longer holds

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def _data(self) -> dict[str, Any]:
        return self.table.data.data  # the memory store's dict: no per-access store indirection on the hot path

    def partition(self, partition: int) -> PartitionState:
        state = self._states.get(partition)
        if state is None:
            state = PartitionState(PartitionView(self._data(), partition), self.cluster_of, self.settings)
            state.recover()
            self._states[partition] = state
            log.info("partition %d state ready: batch %d, watermark %s", partition, state.seq, state.watermark)
        return state

    def held(self) -> dict[int, PartitionState]:
        return dict(self._states)

    def release(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: forget their state (a later assignment recovers it again from the changelog)."""
        for partition in partitions:
            state = self._states.pop(partition, None)
            if state is not None:
                self._retired.add(state.stats)
            PartitionView(self._data(), partition).drop_all()

    def stats(self) -> TransitionStats:
        merged = TransitionStats()
        merged.add(self._retired)
        for state in self._states.values():
            merged.add(state.stats)
        return merged

    @staticmethod
    def encode(partition: int, writes: Iterable[Write]) -> Iterator[tuple[bytes, bytes | None]]:
        """Changelog records of one partition's writes: JSON keys "p/<key>" and JSON values, as Faust's table
        codecs (key_type=str, json values) decode them on recovery."""
        prefix = f"{partition}/"
        dumps = orjson.dumps
        for key, value in writes:
            yield dumps(prefix + key), None if value is None else dumps(value)

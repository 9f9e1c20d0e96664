"""Which partition a user's state lives on, and the reroute of records that arrived on another one.

State is partitioned by murmur2(user_id) (Kafka's Java default, streams/partitioning.py). A producer using another
partitioner -- librdkafka's default `consistent_random` (CRC32) in confluent-kafka, confluent-kafka-go,
node-rdkafka, or `random` -- puts a user's records on other partitions. Such a record is forwarded, keyed and
unchanged (value, timestamp), to the same-numbered partition of the topic's repartition topic
(`<topic>.repartition`) that the user's state lives on, with a header naming where it was first produced; the
worker holding that partition consumes both topics. Records already on the right partition take no detour.
"""

from __future__ import annotations

from streams.partitioning import murmur2_partition

ORIGIN_HEADER = "explorer-origin"
_CACHE_LIMIT = 200_000


class PartitionOf:
    """murmur2 partition of a key, memoised (keys repeat: users; the pure-Python hash is the cost)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            found = self._cache[key] = murmur2_partition(key, self.partitions)
        return found


def origin_of(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}:{partition}@{offset}".encode()


def header(headers: object, name: str) -> bytes | None:
    """A header's value from aiokafka's header list (or a mapping), None when absent."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:  # type: ignore[union-attr]
        if key == name:
            return value
    return None

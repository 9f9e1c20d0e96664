"""Which partition a key lands in: Kafka's default partitioner (murmur2), the same in every client used here.

Producers use `murmur2_random` (confluent-kafka) or aiokafka's default, both the Java client's murmur2, so a
user's interactions, requests and recommendations share a partition number on equally partitioned topics.
"""

from __future__ import annotations


def murmur2_partition(key: bytes, partitions: int) -> int:
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions

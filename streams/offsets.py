"""Consumer-group progress from the broker's point of view: end offsets and committed offsets."""

from __future__ import annotations

from streams.kafka_config import confluent_config
from streams.settings import Settings


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(confluent_config(settings, **{"group.id": "explorer-offsets", "enable.auto.commit": False}))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in metadata.partitions}
    finally:
        consumer.close()


def committed_offsets(settings: Settings, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """Committed offset per partition (-1001 where the group has committed nothing)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(confluent_config(settings, **{"group.id": group, "enable.auto.commit": False}))
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def caught_up(settings: Settings, group: str, topic: str, ends: dict[int, int] | None = None) -> bool:
    """True when `group` has committed every partition of `topic` up to `ends` (default: the current end offsets).

    Faust commits an offset only after flushing its producer, so a caught-up group's state writes are durable.
    """
    ends = ends if ends is not None else end_offsets(settings, topic)
    committed = committed_offsets(settings, group, topic, sorted(ends))
    return all(committed.get(p, -1) >= end for p, end in ends.items() if end > 0)

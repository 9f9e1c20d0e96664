"""Consumer-group progress from the broker's point of view: end offsets and committed offsets."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from streams.kafka_config import confluent_config
from streams.settings import Settings

T = TypeVar("T")


def retry_retriable(call: Callable[[], T], timeout_s: float = 30.0) -> T:
    """Run `call`, retrying while Kafka answers with a retriable error — e.g. NOT_COORDINATOR or
    COORDINATOR_LOAD_IN_PROGRESS while a fresh cluster is still creating `__consumer_offsets`."""
    from confluent_kafka import KafkaError, KafkaException

    # librdkafka does not always flag these as retriable (seen: committed() on a just-started broker raised
    # NOT_COORDINATOR with retriable() False), yet each only means "the coordinator is not ready yet".
    coordinator_not_ready = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                             KafkaError.COORDINATOR_NOT_AVAILABLE}
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = getattr(error, "retriable", lambda: False)() or \
                getattr(error, "code", lambda: None)() in coordinator_not_ready
            if not retriable or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


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
        wanted = [TopicPartition(topic, p) for p in partitions]
        committed = retry_retriable(lambda: consumer.committed(wanted, timeout=10))
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

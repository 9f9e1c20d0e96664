"""Reading the transitions state from its changelog topic: the durable truth, readable without a running worker."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import orjson

from models.counts import AllCounts, read_counts
from streams.kafka_config import confluent_config
from streams.settings import Settings
from streams.topics import changelog_topic_name, consumer_group


class StateNotFound(RuntimeError):
    """The changelog topic of that clusters version does not exist (no worker has counted with it yet)."""


def read_changelog(settings: Settings, clusters_version: str, timeout_s: float = 60.0) -> dict[int, dict[str, Any]]:
    """Latest value of every key, grouped by source partition: {partition: {key: value}}."""
    from confluent_kafka import Consumer, TopicPartition

    topic = changelog_topic_name(consumer_group(settings, clusters_version), clusters_version)
    consumer = Consumer(confluent_config(settings, **{
        "group.id": f"explorer-state-reader-{time.monotonic_ns()}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    }))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise StateNotFound(f"no state for clusters version {clusters_version}: topic {topic} does not exist")
        ends = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        stores: dict[int, dict[str, Any]] = defaultdict(dict)
        deadline = time.monotonic() + timeout_s
        remaining = dict(ends)
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took longer than {timeout_s}s")
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                if message.error():
                    continue
                full_key = orjson.loads(message.key())  # Faust tables encode keys as JSON
                source_partition, _, key = full_key.partition("/")
                value = message.value()
                store = stores[int(source_partition)]
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = orjson.loads(value)
                if message.offset() + 1 >= remaining.get(message.partition(), 0):
                    remaining.pop(message.partition(), None)
        return dict(stores)
    finally:
        consumer.close()


def read_state_counts(settings: Settings, clusters_version: str) -> AllCounts:
    return read_counts(read_changelog(settings, clusters_version).values())

"""Helpers shared by integration and e2e tests: worker subprocesses (from streams.worker_process) and readers."""

from __future__ import annotations

import time

from streams.settings import Settings
from streams.worker_process import WorkerProcess, free_port, run_worker, settings_env, stop_process, wait_until

__all__ = ["WorkerProcess", "run_worker", "settings_env", "stop_process", "wait_until", "free_port", "consume_all",
           "topic_size", "while_alive"]


def while_alive(worker: WorkerProcess, condition):  # type: ignore[no-untyped-def]
    """`condition` for wait_until that fails at once, with the worker's log, when the worker has died."""
    def check():  # type: ignore[no-untyped-def]
        if not worker.alive():
            raise RuntimeError(f"the worker died (exit {worker.process.returncode}):\n{worker.log_tail()}")
        return condition()
    return check


def consume_all(settings: Settings, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Read a topic from the beginning until `expected` messages arrived, then check nothing beyond them exists."""
    from confluent_kafka import Consumer

    from streams.kafka_config import confluent_config

    consumer = Consumer(confluent_config(settings, **{
        "group.id": f"test-reader-{time.monotonic_ns()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }))
    try:
        consumer.subscribe([topic])
        messages = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error():
                    raise AssertionError(f"consumer error on {topic}: {message.error()}")
                messages.append(message)
        total = topic_size(settings, topic)
        assert total == len(messages), f"{topic} holds {total} messages, read {len(messages)} (expected {expected})"
        return messages
    finally:
        consumer.close()


def topic_size(settings: Settings, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from streams.kafka_config import confluent_config

    consumer = Consumer(confluent_config(settings, **{"group.id": "test-sizer"}))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def group_caught_up(settings: Settings, group_id: str, topic: str) -> bool:
    """True when the consumer group has committed every partition of `topic` up to its end offset."""
    from streams.offsets import caught_up

    return caught_up(settings, group_id, topic)

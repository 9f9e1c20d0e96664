"""Baselines for the ingest and transitions benchmarks: the same topic read without Faust.

* `plain_consumer_rate` -- librdkafka reading and touching each value: what the broker and the client can deliver;
* `aiokafka_rate` -- aiokafka's `getmany` loop (the transport Faust runs on) touching each value;
* `same_work_rate` -- ONE process doing the worker's work without any framework: librdkafka consumer, orjson
  decode and validation (streams/validation.py), the partition state (transitions, trends, recent items:
  models/partition_state.py), dead letters and the changelog writes produced and delivered before each commit, and
  (when a knowledge store is given) the LanceDB sync every 0.5 s from one thread, under the worker's garbage-collection
  settings (the start-up and survivor freezes) -- the honest yardstick for the Faust worker's full pipeline;
* `RequestEcho` -- for the latency bench: a process of its own answering every request on its topics at once with a
  fixed record, through plain librdkafka (the worker's fetch wait and linger): what a request's trip through this
  broker costs on these cores with no work and no event loop behind it.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from streams.gc_freeze import SurvivorFreezer, freeze_long_lived
from streams.kafka_config import confluent_config
from streams.settings import Settings


def plain_consumer_rate(settings: Settings, topic: str, expected: int) -> float:
    """The ceiling: librdkafka consuming the topic, doing nothing per message but touching its value."""
    from confluent_kafka import Consumer

    consumer = Consumer(confluent_config(settings, **{
        "group.id": f"{settings.app_id}-ceiling", "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "fetch.min.bytes": 1, "queued.min.messages": 200_000,
    }))
    consumer.subscribe([topic])
    seen = 0
    started = None
    while seen < expected:
        batch = consumer.consume(num_messages=10_000, timeout=1.0)
        if batch and started is None:
            started = time.perf_counter()  # measure reading, not the group join before the first fetch
        for message in batch:
            if message.error() is None:
                message.value()
                seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return seen / elapsed


def aiokafka_rate(settings: Settings, topic: str, expected: int) -> float:
    """aiokafka's own ceiling: a `getmany` loop touching every value (no Faust)."""
    from aiokafka import AIOKafkaConsumer

    async def run() -> float:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap,
                                    group_id=f"{settings.app_id}-aiokafka", auto_offset_reset="earliest",
                                    enable_auto_commit=False, max_poll_records=settings.stream_batch_size)
        await consumer.start()
        seen, started = 0, None
        try:
            while seen < expected:
                records = await consumer.getmany(timeout_ms=1000)
                if records and started is None:
                    started = time.perf_counter()
                for batch in records.values():
                    for record in batch:
                        record.value  # noqa: B018 -- touch it, as the other readers do
                    seen += len(batch)
        finally:
            await consumer.stop()
        return seen / (time.perf_counter() - (started or time.perf_counter()))

    return asyncio.run(run())


def same_work_baseline(settings: Settings, counting: Path, partitions: int) -> Callable[[int], float]:
    """Set up the same-work loop on `settings`' interactions topic -- the clusters built under `counting` (copied
    into `settings.data_dir`), a changelog topic and a LanceDB of its own -- and return its measurement: expected
    events -> `same_work_rate`. Set up first, so a bench can start a publisher between the two."""
    from models.clusters import load_serving
    from models.knowledge import KnowledgeStore
    from streams.topics import INTERACTIONS, INTERACTIONS_DLQ, TopicSpec, create_topics, topic_name

    shutil.copytree(counting / "clusters", settings.data_dir / "clusters")
    clusters = load_serving(settings)
    changelog = f"{settings.app_id}-baseline-changelog"
    create_topics(settings, specs=[TopicSpec("baseline-changelog", changelog, partitions, 1, {})])
    knowledge = KnowledgeStore.from_settings(settings, clusters.version)
    return lambda expected: same_work_rate(settings, topic_name(settings, INTERACTIONS), expected, clusters.cluster_of,
                                           changelog, topic_name(settings, INTERACTIONS_DLQ), knowledge)


def same_work_rate(settings: Settings, topic: str, expected: int, cluster_of: Callable[[str], str | None],
                   changelog_topic: str, dlq_topic: str, knowledge: Any | None = None) -> float:
    """Events/s of the worker's work done in one plain loop (see the module docstring)."""
    from confluent_kafka import Consumer, Producer

    from streams.validation import EventValidator

    consumer = Consumer(confluent_config(settings, **{
        "group.id": f"{settings.app_id}-same-work", "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "queued.min.messages": 200_000,
    }))
    producer = Producer(confluent_config(settings, **{"linger.ms": 5, "enable.idempotence": True,
                                                      "batch.num.messages": 10_000, "acks": "all"}))
    validator = EventValidator(settings)
    executor = ThreadPoolExecutor(max_workers=1)
    consumer.subscribe([topic])
    # The worker's garbage-collection treatment too (streams/gc_freeze.py), so the two compare the same work.
    freezer = SurvivorFreezer() if settings.gc_freeze_survivors else None
    if settings.gc_freeze_after_start:
        freeze_long_lived("the same-work baseline starts")
    if freezer is not None:
        freezer.install()
    try:
        return _same_work_loop(settings, topic, expected, consumer, producer, validator, executor, changelog_topic,
                               dlq_topic, cluster_of, knowledge)
    finally:
        if freezer is not None:
            freezer.uninstall()
        gc.unfreeze()


def _same_work_loop(settings: Settings, topic: str, expected: int, consumer: Any, producer: Any, validator: Any,
                    executor: ThreadPoolExecutor, changelog_topic: str, dlq_topic: str,
                    cluster_of: Callable[[str], str | None], knowledge: Any | None) -> float:
    from agents.state import StateTable
    from models.partition_state import PartitionState
    from streams.dead_letters import dead_letter
    from streams.records import SourcedEvent
    from streams.validation import Rejection

    states: dict[int, PartitionState] = {}
    seen, started, last_sync, last_commit = 0, None, 0.0, 0.0
    pending_sync = None
    while seen < expected:
        messages = consumer.consume(num_messages=settings.stream_batch_size, timeout=1.0)
        if not messages:
            continue
        if started is None:
            started = time.perf_counter()
        by_partition: dict[int, list] = {}
        for message in messages:
            if message.error() is None:
                by_partition.setdefault(message.partition(), []).append(message)
        for partition, batch in by_partition.items():
            state = states.get(partition)
            if state is None:
                state = states[partition] = PartitionState({}, cluster_of, settings)
                state.recover()
            valid = []
            for message in batch:
                result = validator.validate(message.key(), message.value())
                if isinstance(result, Rejection):
                    producer.produce(dlq_topic, key=message.key(), value=dead_letter(
                        topic, partition, message.offset(), message.value(), str(result),
                        settings.dead_letter_max_raw_bytes))
                else:
                    valid.append(SourcedEvent(result, partition, message.offset()))
            applied = state.apply_batch(valid)
            for key, value in StateTable.encode(partition, applied.writes):
                producer.produce(changelog_topic, key=key, value=value, partition=partition)
            producer.poll(0)
            seen += len(batch)
        if knowledge is not None and time.perf_counter() - last_sync >= 0.5 and (
                pending_sync is None or pending_sync.done()):
            last_sync = time.perf_counter()
            updates = []
            for partition, state in states.items():
                if state.changed_pairs or state.trends_changed:
                    pairs, state.changed_pairs, state.trends_changed = state.changed_pairs, set(), False
                    updates.append(knowledge.prepare(partition, state.counts, state.watermark, pairs))
            pending_sync = executor.submit(lambda ups=updates: [knowledge.write(u) for u in ups])
        if time.perf_counter() - last_commit >= 0.5 or seen >= expected:
            producer.flush(30)  # delivered before the commit, as the worker acks only delivered batches
            consumer.commit(asynchronous=True)
            last_commit = time.perf_counter()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    if pending_sync is not None:
        pending_sync.result()
    consumer.close()
    executor.shutdown()
    return seen / elapsed


class RequestEcho:
    """A stand-in recommender in a process of its own: every request on `settings`' request topic is answered at
    once on its recommendations topic with a fixed record (`source` "echo", the request's id, user and ts, and
    `produced_at`) -- the floor a request's round trip through the broker has on this machine, with the same
    fetch wait and linger as the worker's."""

    def __init__(self, settings: Settings) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._ready = context.Event()
        self._process = context.Process(target=_echo_requests, args=(settings, self._stop, self._ready), daemon=True)

    def __enter__(self) -> RequestEcho:
        self._process.start()
        if not self._ready.wait(60):
            raise RuntimeError("the request echo did not get its partitions within 60 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(30)


def _echo_requests(settings: Settings, stop: Any, ready: Any) -> None:
    import orjson
    from confluent_kafka import Consumer, Producer, TopicPartition

    from streams.topics import RECOMMENDATION_REQUESTS, RECOMMENDATIONS, topic_name

    requests, answers = topic_name(settings, RECOMMENDATION_REQUESTS), topic_name(settings, RECOMMENDATIONS)
    consumer = Consumer(confluent_config(settings, **{
        "group.id": f"{settings.app_id}-echo", "enable.auto.commit": False,
        "fetch.wait.max.ms": max(1, int(settings.consumer_fetch_max_wait_s * 1000))}))
    producer = Producer(confluent_config(settings, **{"linger.ms": settings.producer_linger_s * 1000}))
    partitions = consumer.list_topics(requests, timeout=10).topics[requests].partitions
    start = [TopicPartition(requests, p, consumer.get_watermark_offsets(TopicPartition(requests, p), timeout=10)[1])
             for p in partitions]
    consumer.assign(start)  # from each partition's end: every request sent after `ready` is answered
    ready.set()
    while not stop.is_set():
        message = consumer.poll(0.05)
        if message is None or message.error() is not None:
            continue
        request = orjson.loads(message.value())
        producer.produce(answers, key=message.key(), value=orjson.dumps({
            "request_id": request["request_id"], "user_id": request["user_id"], "ts": request["ts"],
            "produced_at": time.time(), "source": "echo"}))
        producer.poll(0)
    producer.flush(10)
    consumer.close()

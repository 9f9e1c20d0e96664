"""Backfill: fill a clusters version's state from the retained `interactions` topic, then make it the serving one.

The state of each clusters version belongs to its own consumer group (streams.topics.consumer_group), so a backfill
never touches what the live workers count and serve with: it positions the new group at `--from`, runs a worker
for that version until the group has committed everything that was in the topic when it started, and then switches
the serving pointer. Live workers pick the new version up when they restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from streams.acls import backfill_access
from streams.kafka_check import check_kafka
from streams.kafka_config import confluent_config
from streams.offsets import caught_up, retry_retriable
from streams.settings import Settings
from streams.topics import INTERACTIONS, consumer_group, topic_name
from streams.worker_process import free_port, run_worker, wait_until


class BackfillError(RuntimeError):
    """The backfill cannot start or did not finish; the message says why."""


@dataclass(frozen=True, slots=True)
class BackfillResult:
    clusters_version: str
    group: str
    start_offsets: dict[int, int]
    end_offsets: dict[int, int]
    seconds: float

    @property
    def events(self) -> int:
        return sum(self.end_offsets[p] - self.start_offsets[p] for p in self.end_offsets)


def parse_time(text: str) -> float:
    """Seconds since the epoch from 'beginning', a number, or an ISO date/time (UTC unless it says otherwise)."""
    if text.strip().lower() in ("beginning", "earliest", "start"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BackfillError(f"--from {text!r} is neither 'beginning', epoch seconds nor an ISO date") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _group_offsets(
    settings: Settings, group: str, topic: str, from_ts: float
) -> tuple[dict[int, int], dict[int, int], bool]:
    """(start offsets for from_ts, end offsets now, whether the group has committed offsets already)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(confluent_config(settings, **{"group.id": group, "enable.auto.commit": False}))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise BackfillError(f"topic {topic} does not exist: run `explorer topics create`")
        partitions = sorted(metadata.partitions)
        assigned = [TopicPartition(topic, p) for p in partitions]
        committed = retry_retriable(lambda: consumer.committed(assigned, timeout=10))
        has_committed = any(tp.offset >= 0 for tp in committed)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        # Kafka record timestamps are the producer's create time; replayed events carry their event time in the value,
        # so `from_ts` is matched against the record timestamp (publish time) — 0 means the whole retained topic.
        wanted = [TopicPartition(topic, p, int(from_ts * 1000)) for p in partitions]
        found = retry_retriable(lambda: consumer.offsets_for_times(wanted, timeout=10))
        starts = {tp.partition: (tp.offset if tp.offset >= 0 else ends[tp.partition]) for tp in found}
        if not has_committed:
            start_at = [TopicPartition(topic, p, starts[p]) for p in partitions]
            retry_retriable(lambda: consumer.commit(offsets=start_at, asynchronous=False))
        return starts, ends, has_committed
    finally:
        consumer.close()


def run_backfill(
    settings: Settings,
    clusters_version: str,
    from_ts: float,
    log_dir: Path,
    timeout_s: float = 3600.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> BackfillResult:
    from models.clusters import load_version, set_serving

    load_version(settings, clusters_version)  # fail early on an unknown version
    group = consumer_group(settings, clusters_version)
    topic = topic_name(settings, INTERACTIONS)
    check_kafka(settings, backfill_access(settings, group))  # the worker it starts checks the rest itself
    starts, ends, resumed = _group_offsets(settings, group, topic, from_ts)
    if resumed:
        starts = {p: 0 for p in ends}  # progress is then shown over the whole topic
    worker_settings = settings.model_copy(update={
        "serving_clusters_version": clusters_version,
        "dead_letters": False,
        "recommendations_enabled": False,  # the serving workers answer requests; a backfill only counts
        "web_port": free_port(),
    })
    started = time.monotonic()
    total = sum(ends[p] - starts[p] for p in ends)
    with run_worker(worker_settings, log_dir) as worker:
        def done() -> bool:
            if on_progress is not None:
                on_progress(int(worker.metric("explorer_events_in_total")), total)
            if not worker.alive():
                raise BackfillError(f"the backfill worker died:\n{worker.log_tail()}")
            return caught_up(settings, group, topic, ends)

        wait_until(done, timeout_s, f"group {group} to commit offsets {ends}", poll_s=1.0)
    set_serving(settings, clusters_version)
    return BackfillResult(clusters_version, group, starts, ends, time.monotonic() - started)

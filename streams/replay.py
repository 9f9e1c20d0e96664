"""Publishing interaction events to Kafka: the idempotent producer used by dataset replay and load generation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from streams import codec
from streams.records import InteractionEvent
from streams.settings import Settings
from streams.topics import INTERACTIONS, topic_name


class ReplayError(RuntimeError):
    """Some events could not be delivered; the message says how many and why."""


@dataclass(slots=True)
class ReplayStats:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0


class RateLimiter:
    """Spreads sends evenly at `rate` per second (None: as fast as the producer takes them)."""

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = clock()

    def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        if self._next > now:
            self._sleep(self._next - now)
        self._next = max(self._next, now) + self._interval


def make_producer(settings: Settings, partitioner: str = "murmur2_random"):  # -> confluent_kafka.Producer
    from confluent_kafka import Producer

    from streams.kafka_config import confluent_config

    # Idempotence keeps retries from writing duplicates and keeps per-partition order.
    return Producer(confluent_config(
        settings,
        **{
            "enable.idempotence": True,
            # murmur2, the Java client's (and aiokafka's) default, puts a user's events straight on the partition
            # that holds the user's state; any other partitioner works too, at the cost of a reroute (agents/routing.py).
            "partitioner": partitioner,
            "acks": "all",
            "linger.ms": 10,
            "batch.num.messages": 10_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        },
    ))


def publish_events(
    settings: Settings,
    events: Iterable[InteractionEvent],
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    topic: str | None = None,
    flush_timeout_s: float = 60.0,
    partitioner: str = "murmur2_random",
) -> ReplayStats:
    """Send events keyed by user_id; waits for every delivery report and raises if any failed."""
    from confluent_kafka import KafkaError

    producer = make_producer(settings, partitioner)
    target = topic or topic_name(settings, INTERACTIONS)
    stats = ReplayStats()
    limiter = RateLimiter(rate)

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is None:
            stats.delivered += 1
        else:
            stats.failed += 1
            if len(stats.errors) < 10:
                stats.errors.append(str(err))

    started = time.monotonic()
    for event in events:
        limiter.wait()
        payload = codec.dumps(event)
        while True:
            try:
                producer.produce(target, key=event.user_id.encode(), value=payload, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka drain it, then retry this event
                producer.poll(0.1)
        stats.sent += 1
        if stats.sent % 1000 == 0:  # report and serve delivery callbacks in chunks: per event is costly
            producer.poll(0)
            if on_progress is not None:
                on_progress(1000)
    if on_progress is not None and stats.sent % 1000:
        on_progress(stats.sent % 1000)
    remaining = producer.flush(flush_timeout_s)
    stats.seconds = time.monotonic() - started
    if remaining:
        stats.failed += remaining
        stats.errors.append(f"{remaining} events still undelivered after {flush_timeout_s}s")
    if stats.failed:
        raise ReplayError(f"{stats.failed} of {stats.sent} events were not delivered: {'; '.join(stats.errors)}")
    return stats

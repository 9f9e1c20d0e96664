"""The ingest agent: validates interaction records, reroutes mis-partitioned ones, applies the rest to the state.

It takes one `RecordBatch` (agents/batching.py) per fetched run of a partition of `interactions` or of its
repartition topic. For each batch:

1. every record is validated (streams/validation.py); a bad one becomes a dead letter with the reason;
2. a valid event from `interactions` whose user's state lives on another partition (the producer did not partition
   by murmur2) is forwarded to that partition of `interactions.repartition` (agents/routing.py);
3. the others are applied to the partition state (models/partition_state.py); events it cannot place (too late,
   a processing error) become dead letters too;
4. dead letters, forwarded records, automatic recommendation requests and the changelog writes go out as one
   outbox unit, and the batch is acked once all of them are delivered (agents/acks.py).

Nothing is dropped and nothing is committed early: per-record problems are dead-lettered, and anything else that
goes wrong in a batch stops the worker (agents/health.py) before its offsets can be acked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from agents.batching import RecordBatch, SourceRecord, keep_queued_events_on_resume
from agents.priority import Priority
from agents.outbox import Outbox, OutboxUnit
from agents.routing import ORIGIN_HEADER, PartitionOf, header, origin_of
from models.partition_state import DIRECT, REROUTED, BatchResult, PartitionState, Write
from streams.dead_letters import dead_letter
from streams.records import RecommendationRequest, SourcedEvent
from streams.validation import EventValidator, Rejection

if TYPE_CHECKING:
    import faust

    from agents.acks import Acker
    from agents.health import Health
    from agents.state import StateTable
    from streams.metrics import Metrics
    from streams.settings import Settings

log = logging.getLogger(__name__)

# Records per slice of a batch: the agent yields the event loop between slices (~1-2 ms each on a busy core). A
# request needs several turns of the loop before it is answered (fetch response, Faust's getmany, the agent, two
# deliveries) and waits one slice per turn: 250-event slices made that ~110 ms under a full-speed replay
# (bench.recommend_latency), while a yield costs ~20 us.
YIELD_EVERY = 50
# Changelog records encoded between two yields: a batch's writes encoded at once held the loop up to 111 ms under a
# full-speed replay (users' records grow with their history), the longest step of the ingest agent.
ENCODE_EVERY = 200


async def encoded_in_slices(encode: Callable[[int, list[Write]], list[tuple[bytes, bytes | None]]], partition: int,
                            writes: list[Write], pause: Callable[[], Awaitable[None]], every: int = ENCODE_EVERY
                            ) -> list[tuple[bytes, bytes | None]]:
    """The changelog records of a batch's `writes`, `every` at a time with `pause()` awaited in between (requests are
    answered there). Only the ingest agent changes a partition's records, so the ones not yet encoded wait unchanged."""
    records: list[tuple[bytes, bytes | None]] = []
    for start in range(0, len(writes), every):
        if start:
            await pause()
        records.extend(encode(partition, writes[start:start + every]))
    return records


@dataclass(frozen=True)
class IngestTopics:
    interactions: str
    repartition: str
    dlq: str
    requests: str


class IngestAgent:
    def __init__(self, settings: Settings, topics: IngestTopics, states: StateTable | None, outbox: Outbox,
                 acker: Acker, metrics: Metrics, health: Health,
                 partitions_for: Callable[[str], Awaitable[int]], clock: Callable[[], float] = time.time,
                 priority: Priority | None = None) -> None:
        self.settings = settings
        self.topics = topics
        self.priority = priority or Priority()
        self.states = states
        self.outbox = outbox
        self.acker = acker
        self.metrics = metrics
        self.health = health
        self.partitions_for = partitions_for
        self.clock = clock
        self.validator = EventValidator(settings, clock=clock)
        self.partition_of = PartitionOf(settings.interactions_partitions)
        self.last_offsets: dict[tuple[str, int], int] = {}
        self._persist: tuple[int, list[tuple[bytes, bytes | None]], str] | None = None
        self._first_batch_seen = False
        self._misrouted_logged_at: dict[str, float] = {}

    # ---------------------------------------------------------------------------------------------- one batch
    async def handle(self, batch: RecordBatch) -> None:
        where = f"{batch.topic}:{batch.partition}@{batch.first_offset}..{batch.offset}"
        try:
            self._persist = None
            unit = await self._process(batch)
            await unit.send()
        except Exception as exc:  # not a record's fault (those are dead-lettered): stop before anything is acked
            await self.health.fail(f"ingest batch {where}", exc)
            raise
        if self._persist is not None and self.states is not None:
            partition, records, changelog = self._persist
            self.states.persist(partition, records, lambda: unit.last_offset(changelog, partition))
        await self.acker.after_delivery(batch, unit, f"ingest batch {where}")

    async def _process(self, batch: RecordBatch) -> OutboxUnit:
        started = time.monotonic()
        metrics = self.metrics
        unit = self.outbox.unit()
        rerouted = batch.topic == self.topics.repartition
        source = REROUTED if rerouted else DIRECT
        partition = batch.partition
        valid: list[SourcedEvent] = []
        misrouted = 0
        # Broker append time -> now, of the batch's oldest record: how far behind real time the worker runs (per
        # batch, not per record: a histogram observation costs more than validating an event).
        metrics.event_latency.observe(max(0.0, self.clock() - batch.records[0].timestamp / 1000))
        validate = self.validator.validate
        for count, record in enumerate(batch.records, 1):
            if count % YIELD_EVERY == 0:
                await self.priority.yield_to_requests()  # requests are answered between slices of a batch
            result = validate(record.key, record.value)
            if isinstance(result, Rejection):
                metrics.events_rejected.labels(result.code).inc()
                await self._dead_letter(unit, record, str(result))
                continue
            target = self.partition_of(record.key)  # type: ignore[arg-type]  # validated: key == user_id
            if target != partition:
                if rerouted:  # only a faulty writer of the internal topic gets here
                    metrics.events_rejected.labels("wrong_partition").inc()
                    await self._dead_letter(unit, record, f"wrong_partition: a rerouted record for partition "
                                                          f"{target} arrived on partition {partition}")
                    continue
                self._forward(unit, record, target)
                misrouted += 1
                continue
            valid.append(SourcedEvent(result, partition, record.offset, source))
        if not rerouted:  # a rerouted record was counted in (and valid) where it was first read
            metrics.events_in.inc(len(batch.records))
            metrics.events_valid.inc(len(valid) + misrouted)
        if misrouted:
            metrics.events_misrouted.labels(self.topics.interactions).inc(misrouted)
            self._log_misrouted(misrouted, len(batch.records))
        if self.states is not None and valid:
            state = self.states.partition(partition)
            result = await self._apply(state, valid)
            records_by_offset = {r.offset: r for r in batch.records} if result.failures else {}
            for sourced, reason in result.failures:
                metrics.events_rejected.labels(reason.split(":", 1)[0]).inc()
                await self._dead_letter(unit, records_by_offset[sourced.offset], reason)
            for sourced in result.requests_due:
                await self._auto_request(unit, sourced)
            changelog = self.states.changelog_topic
            records = await encoded_in_slices(self.states.encode, partition, result.writes,
                                              self.priority.yield_to_requests)
            for key, value in records:
                unit.add(changelog, partition, key, value)
            self._persist = (partition, records, changelog)
        if rerouted:
            metrics.events_rerouted_in.labels(self.topics.interactions).inc(len(batch.records))
        self.last_offsets[(batch.topic, partition)] = batch.offset
        metrics.batch_seconds.observe(time.monotonic() - started)
        now = time.time()
        if not self._first_batch_seen:
            self._first_batch_seen = True
            metrics.ingest_first_batch_at.set(now)
            metrics.ingest_first_batch_records.set(len(batch.records))
        metrics.ingest_last_batch_at.set(now)
        return unit

    async def _apply(self, state: PartitionState, events: list[SourcedEvent]) -> BatchResult:
        """Apply a batch; an event whose processing raises is retried (bounded, with backoff, counted) before it is
        dead-lettered, so a failure that passes (a flaky dependency of a processor) costs time, not records. Events
        are applied whole or not at all, and in order: the batch waits for the failing event."""
        result = BatchResult()
        rest, attempts = events, 0
        while rest:
            done, error = state.apply_events(rest[:YIELD_EVERY], result)
            if error is None:
                rest = rest[done:]
                if rest:
                    await self.priority.yield_to_requests()  # a slice at a time: requests go in between
                continue
            rest = rest[done:]
            attempts += 1
            self.metrics.processing_retries.inc()
            if attempts > self.settings.processing_retries:
                log.error("event at %s:%d@%d failed %d times, dead-lettered: %s", self.topics.interactions,
                          rest[0].partition, rest[0].offset, attempts, error)
                state.record_error(result, rest[0], error)
                rest, attempts = rest[1:], 0
                continue
            self.health.send_retried(f"processing {type(error).__name__}")
            await asyncio.sleep(self.settings.processing_retry_backoff_s * 2 ** (attempts - 1))
        result.writes = state.finish()
        return result

    # ---------------------------------------------------------------------------------------------- outputs
    async def _dead_letter(self, unit: OutboxUnit, record: SourceRecord, error: str) -> None:
        if not self.settings.dead_letters:  # a backfill: the live workers dead-lettered these records already
            return
        origin = header(record.headers, ORIGIN_HEADER)
        value = dead_letter(record.topic, record.partition, record.offset, record.value, error,
                            self.settings.dead_letter_max_raw_bytes, origin.decode() if origin else None,
                            clock=self.clock)
        partitions = await self.partitions_for(self.topics.dlq)
        target = self.partition_of(record.key) % partitions if record.key else 0
        unit.add(self.topics.dlq, target, record.key, value)

    def _forward(self, unit: OutboxUnit, record: SourceRecord, target: int) -> None:
        headers = [(ORIGIN_HEADER, origin_of(record.topic, record.partition, record.offset))]
        unit.add(self.topics.repartition, target, record.key, record.value, headers,
                 timestamp_ms=record.timestamp)

    async def _auto_request(self, unit: OutboxUnit, sourced: SourcedEvent) -> None:
        event = sourced.event
        # Deterministic id: a redelivered event asks again with the same id and gets the same answer.
        request = RecommendationRequest(f"auto-{event.event_id}", event.user_id, event.ts)
        unit.add(self.topics.requests, sourced.partition, event.user_id.encode(), orjson.dumps(request))
        self.metrics.auto_requests.inc()

    def _log_misrouted(self, count: int, of: int) -> None:
        now = time.monotonic()
        topic = self.topics.interactions
        if now - self._misrouted_logged_at.get(topic, -1e9) >= 60.0:
            self._misrouted_logged_at[topic] = now
            log.warning("%d of %d records of a batch of %s arrived on a partition other than their user's (the "
                        "producer does not partition by murmur2): rerouted through %s at the cost of one more hop; "
                        "explorer_events_misrouted_total counts them (logged at most once a minute)",
                        count, of, topic, self.topics.repartition)

    # ---------------------------------------------------------------------------------------------- lag
    def report_lag(self, consumer: Any) -> float:
        """Update the lag gauges of this agent's partitions; returns the total lag."""
        total = 0.0
        for tp in consumer.assignment():
            if tp.topic not in (self.topics.interactions, self.topics.repartition):
                continue
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            seen = self.last_offsets.get((tp.topic, tp.partition))
            lag = max(0, highwater - (seen + 1 if seen is not None else 0))
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
            total += lag
        return total


def attach(app: faust.App, agent: IngestAgent, channel: faust.TopicT) -> None:
    """The Faust agent: one RecordBatch at a time, acked by the agent itself once its outputs are delivered."""

    @app.agent(channel, name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        keep_queued_events_on_resume(app, stream)
        async for event in stream.noack().events():
            await agent.handle(event.message)

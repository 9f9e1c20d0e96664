"""A batch path through Faust for the hot topics: one stream event per fetched run of one partition.

faust-streaming 0.15 delivers every record on its own: `Consumer._drain_messages` awaits
`wait_first(callback(message), suspend_flow.wait())` per message (tasks and an `asyncio.wait` each), the conductor
takes a lock, waits on flow control and decodes per message, and the stream iterator sleeps and acks per event —
about 200 µs of CPU per record on a small machine, whatever the agent does. For topics named in
`ExplorerApp.batch_topics` the consumer below hands the conductor ONE `RecordBatch` per partition per fetch instead:
its `value` is the list of that run's `SourceRecord`s, and acking it acks every offset of the run. Everything else
(rebalances, flow control, generations, tables and their changelogs, recovery, commits) stays Faust's own.

Overridden Faust code (pinned by tests/unit/test_batching.py, which fails when an upgrade changes it):

* `Consumer._drain_messages` -- the loop above, batching for the batch topics, Faust's per-message path for others;
* `Consumer.ack` -- a `RecordBatch` acks its whole offset range, and only once the agent processed it (Faust's
  iterator acks events it skips during a rebalance: for a batch that would commit records never processed);
* `Consumer._new_offset` -- Faust's commits skip a hole of one offset (`min(acked) - committed > 1`), and any hole
  when the partition has no commit yet or its committed offset is 0 (`if committed_offset:`): a record that was
  fetched but never acked (an agent that crashed on it) was then committed past and lost. Here a partition's
  committable offset never passes its first unacked record: the head of the acked run must be the committed offset
  (or, before the first commit, the first offset fetched after the last seek).
* `Consumer._wait_next_records` -- records already fetched for the app's latency topics (recommendation
  requests) are taken before any others, so a request does not wait behind a prefetched backlog of interactions;
  and while the bulk topics' agents hold `ExplorerApp.max_queued_records` records not yet acked, their partitions
  are not fetched from (EXPLORER_CONSUMER_MAX_QUEUED_RECORDS): the backlog stays at the broker, not in the worker's
  memory, where every full garbage collection walked it;
* `ThreadDelegateConsumer._commit` -- after a crash, Faust's stop path still commits (`wait_empty`), but the crash has
  already stopped the consumer's thread, so that commit waited forever on a queue nobody reads and the failed worker
  never exited. A crashed consumer commits nothing: what was acked is durable, and a restart re-reads from the last
  commit (the changelog protocol skips what it already applied).
* `AIOKafkaConsumerThread.on_start` -- once aiokafka's consumer has started, its fetcher's prefetch backoff and fetch
  wait are set to `ExplorerApp.prefetch_backoff_s` and `fetch_max_wait_s` (EXPLORER_CONSUMER_PREFETCH_BACKOFF_S,
  EXPLORER_CONSUMER_FETCH_MAX_WAIT_S; neither is an option Faust passes on). aiokafka sends no fetch to a broker
  while any of its partitions has fetched records not yet consumed, for up to that backoff (0.1 s of its own: a
  request arriving then waited for it, the ~110 ms p99 of idle table hits), and keeps one fetch in flight per
  broker, which the broker may hold for the fetch wait when none of its partitions has new records (Faust: 1.5 s).
  A short backoff alone then made ingestion lag: fetches of only the idle partitions sat at the broker while the
  busy ones could not be fetched. Both short together serve requests fast without the lag (the settings comments
  have the figures). `tune_fetch_actions` also keeps aiokafka's fetch routine from sleeping 0.2 s behind a fetch
  that already finished (a race of its done-callbacks), and makes the fetches sent while a request partition's
  fetched records wait to be consumed -- that partition is then left out -- ask the broker to hold them only
  `fetch_max_wait_requests_held_s`, so the next request on that partition never waits a whole fetch wait;
* the producer is idempotent (`enable_idempotence`): a changelog batch that failed for good can never be followed
  by a later one of the same partition, so a recovered table is always a prefix of what was written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, ConsumerMessage, Message
from faust.types.tuples import ack_lock
from faust.utils.functional import consecutive_numbers
from mode.utils.futures import notify

log = logging.getLogger(__name__)

# While the bulk agents' queues are full, how long a fetch waits for a request before the consumer looks again
# whether the agents made room (a queue of thousands of records outlasts it many times).
SATURATED_POLL_S = 0.01


class SourceRecord:
    """The shape of one Kafka record of a batch. A batch holds aiokafka's own ConsumerRecords (same attributes):
    no per-record conversion; this class is for tests and tools that make records by hand."""

    __slots__ = ("topic", "partition", "offset", "timestamp", "key", "value", "headers")

    def __init__(self, topic: str, partition: int, offset: int, timestamp: int, key: bytes | None,
                 value: bytes | None, headers: Any) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp = timestamp  # milliseconds since the epoch (broker or producer time), as Kafka has it
        self.key = key
        self.value = value
        self.headers = headers

    def __repr__(self) -> str:
        return f"SourceRecord({self.topic}:{self.partition}@{self.offset})"


class RecordBatch(ConsumerMessage):
    """A Faust message standing for a run of records of one partition (offsets first_offset..offset).

    `offset` is the run's last offset (Faust's read-offset bookkeeping uses it); `value` is the records."""

    __slots__ = ("first_offset", "processed")

    def __init__(self, tp: TP, records: list[Any], generation_id: int | None) -> None:
        first, last = records[0], records[-1]
        super().__init__(tp.topic, tp.partition, last.offset, last.timestamp / 1000.0, 0, None, None, records, None,
                         serialized_key_size=0, serialized_value_size=0, tp=tp, generation_id=generation_id)
        self.first_offset = first.offset
        self.processed = False  # set by the agent that processed it: only then may it be acked

    @property
    def records(self) -> list[SourceRecord]:
        return self.value  # type: ignore[return-value]

    def offsets(self) -> range:
        return range(self.first_offset, self.offset + 1)



class BatchingConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer with the batch path for `app.batch_topics` and hole-safe commits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per partition since its last seek: the first offset delivered (where acks must start while nothing is
        # committed yet) and the last one (fetches re-deliver nothing before it).
        self._first_delivered: dict[TP, int] = {}
        self._last_delivered: dict[TP, int] = {}
        # Batches handed to their agents and not yet acked: id(batch) -> (consumer generation, records, a latency
        # topic's). The bulk topics' total bounds what the worker holds in memory; the latency topics' (requests)
        # bounds how many requests are taken in at once, so that a flood of them cannot stop the consumer loop.
        self._queued: dict[int, tuple[int | None, int, bool]] = {}
        self._queued_total = 0
        self._queued_urgent = 0
        self._queued_generation: int | None = None
        self.saturated_fetches = 0  # fetches that left the bulk partitions out: their agents had enough queued
        self.saturated_request_fetches = 0  # fetches that left the requests out: enough of them were in flight

    # ------------------------------------------------------------------ fetching
    def _new_consumer_thread(self) -> PromptFetchConsumerThread:
        return PromptFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by the integration tests
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        batch_topics: frozenset[str] = getattr(self.app, "batch_topics", frozenset())
        latency_topics: frozenset[str] = getattr(self.app, "latency_topics", frozenset())
        to_message = self._to_message
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active_partitions = await self._next_records(1.0)
                await self.sleep(0)
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    # As Faust's getmany: records fetched while flow stopped are discarded, and the consumer goes
                    # back to the committed offsets (they are fetched again after the rebalance/recovery).
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning("exception performing seek when flow not active %r", exc)
                    continue
                generation_id = self.app.consumer_generation_id
                for tp, tp_records in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation_id:
                        break
                    if not (active_partitions is None or tp in active_partitions
                            or tp in self._buffered_partitions):
                        continue
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    fresh = self._fresh(tp, tp_records)
                    if not fresh:
                        continue
                    if tp.topic in batch_topics:
                        batch = RecordBatch(tp, fresh, generation_id)  # aiokafka's records, as they are
                        self._queue(batch, urgent=tp.topic in latency_topics)
                        self._delivering(tp, batch.first_offset)
                        handoff = callback(batch)
                        waited = await self.wait_first(handoff, self.suspend_flow.wait())
                        if handoff not in waited.done:  # not handed over: it will never be acked
                            self._unqueue(batch)
                        self._delivered(tp, batch.offset)
                        continue
                    for count, record in enumerate(fresh, 1):
                        if count % 100 == 0:
                            await asyncio.sleep(0)  # as Faust: answer health checks while draining a long run
                        self._delivering(tp, record.offset)
                        await self.wait_first(callback(to_message(tp, record)), self.suspend_flow.wait())
                        self._delivered(tp, record.offset)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _next_records(self, timeout: float) -> tuple[Any, set[TP] | None]:
        """Faust's `_wait_next_records`, with two changes: records already fetched for the app's latency topics are
        taken before any others, so a request never waits behind a prefetched backlog of interactions; and while
        the bulk topics' agents hold `app.max_queued_records` records not yet acked, none of their partitions is
        fetched from (the backlog stays at the broker, see `queued_records`) -- nor the latency topics' while
        `app.max_queued_requests` requests are in flight: a flood of requests then waits at the broker too, instead
        of filling the agent's queue until handing over the next one would block this loop, and the interactions
        with it (a cap on what a flood puts into the worker; the pauses of ingestion for requests are bounded apart,
        agents/priority.py)."""
        urgent_topics: frozenset[str] = getattr(self.app, "latency_topics", frozenset())
        saturated = self._saturated()
        requests_saturated = bool(urgent_topics) and self._requests_saturated()
        if not (urgent_topics or saturated) or not self.flow_active or self.app.client_only:
            return await self._wait_next_records(timeout)
        try:
            self.not_waiting_next_records.set()
            active = self._get_active_partitions()
            if saturated or requests_saturated:
                left_out: frozenset[str] = frozenset()
                if saturated:
                    self.saturated_fetches += 1
                    left_out |= getattr(self.app, "batch_topics", frozenset()) - urgent_topics
                if requests_saturated:
                    self.saturated_request_fetches += 1
                    left_out |= urgent_topics
                active = {tp for tp in active if tp.topic not in left_out}
                # Wake soon to see whether the agents made room; a request that arrives meanwhile wakes it at once.
                timeout = min(timeout, SATURATED_POLL_S)
            if not active:
                await self.sleep(SATURATED_POLL_S if saturated or requests_saturated else 1)
                return {}, active
            urgent = {tp for tp in active if tp.topic in urgent_topics}
            if urgent:
                records = await self._getmany(active_partitions=urgent, timeout=0)
                if records:
                    return records, active
            return await self._getmany(active_partitions=active, timeout=timeout), active
        finally:
            self.not_waiting_next_records.set()

    # ------------------------------------------------------------------ the bound on queued records
    def _saturated(self) -> bool:
        limit = getattr(self.app, "max_queued_records", None)
        return limit is not None and self.queued_records >= limit

    def _requests_saturated(self) -> bool:
        limit = getattr(self.app, "max_queued_requests", None)
        return limit is not None and self.queued_requests >= limit

    @property
    def queued_records(self) -> int:
        """Records of the bulk topics handed to their agents and not yet acked, in the current generation.

        Without a bound the consumer hands over every fetched run at once: a worker behind a full-speed replay held
        ~200,000 fetched records in its agent's queue -- seconds of work, each record a tracked object that every
        full garbage collection walked (69-121 ms pauses of the whole worker, 7-8 of them while 60,000-90,000 events
        were ingested)."""
        self._follow_generation()
        return self._queued_total

    @property
    def queued_requests(self) -> int:
        """Records of the latency topics (requests) handed to their agents and not yet acked, this generation."""
        self._follow_generation()
        return self._queued_urgent

    def _follow_generation(self) -> None:
        # Batches of an older generation are skipped by Faust's iterator, so they stop counting.
        generation = self.app.consumer_generation_id
        if generation != self._queued_generation:
            self._queued = {key: entry for key, entry in self._queued.items() if entry[0] == generation}
            self._queued_total = sum(count for _, count, urgent in self._queued.values() if not urgent)
            self._queued_urgent = sum(count for _, count, urgent in self._queued.values() if urgent)
            self._queued_generation = generation

    def _queue(self, batch: RecordBatch, urgent: bool = False) -> None:
        self._unqueue(batch)  # an id of a batch that is gone may be reused
        self._follow_generation()
        self._queued[id(batch)] = (batch.generation_id, len(batch.records), urgent)
        if batch.generation_id == self._queued_generation:
            self._count(urgent, len(batch.records))

    def _unqueue(self, batch: Message) -> None:
        entry = self._queued.pop(id(batch), None)
        if entry is not None and entry[0] == self._queued_generation:
            self._count(entry[2], -entry[1])

    def _count(self, urgent: bool, records: int) -> None:
        if urgent:
            self._queued_urgent += records
        else:
            self._queued_total += records

    def _fresh(self, tp: TP, records: list[Any]) -> list[Any]:
        """The records not delivered yet: after the last one delivered, or from the position of the last seek."""
        last = self._last_delivered.get(tp)
        if last is not None:
            return [r for r in records if r.offset > last]
        position = self._read_offset[tp]  # Faust's: the seek position (None for 0 or unknown)
        return records if position is None else [r for r in records if r.offset >= position]

    def _delivering(self, tp: TP, offset: int) -> None:
        """Offsets skipped before `offset` (compaction, transaction markers) hold no record: mark them a gap, so
        that acks can reach past them; the first delivery after a seek starts at the committed offset."""
        last = self._last_delivered.get(tp)
        start = self._committed_offset[tp] if last is None else last + 1
        if last is None and start is None:
            self._first_delivered[tp] = offset  # no commit yet: acks start here
        elif start is not None and offset > start and self.app.topics.acks_enabled_for(tp.topic):
            gaps = self._gap[tp]
            gaps.addi(start, offset)
            gaps.merge_overlaps()

    def _delivered(self, tp: TP, offset: int) -> None:
        self._last_delivered[tp] = offset
        self._read_offset[tp] = offset  # Faust's own bookkeeping (livelock detection reads it)

    def _forget_positions(self, tps: Iterable[TP] | None = None) -> None:
        for table in (self._first_delivered, self._last_delivered):
            if tps is None:
                table.clear()
            else:
                for tp in tps:
                    table.pop(tp, None)

    async def seek(self, partition: TP, offset: int) -> None:
        self._forget_positions([partition])
        await super().seek(partition, offset)

    async def perform_seek(self) -> None:
        self._forget_positions()
        await super().perform_seek()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self._forget_positions(revoked)
        await super().on_partitions_revoked(revoked)

    # ------------------------------------------------------------------ acks and commits
    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        if self.crashed:
            log.warning("not committing %d partition(s) after a crash: a restart re-reads from the last commit",
                        len(offsets))
            return False
        return await super()._commit(offsets)

    def ack_processed(self, batch: RecordBatch) -> bool:
        """The one way a batch gets acked: by the agent, after its outputs were delivered."""
        batch.processed = True
        return self.ack(batch)

    def ack(self, message: Message) -> bool:
        if not isinstance(message, RecordBatch):
            return super().ack(message)
        self._unqueue(message)  # processed, or skipped by the iterator: either way no longer the agent's to do
        with ack_lock:
            # Faust's stream iterator acks events it *skips* (flow control stopped, an older consumer generation):
            # a batch is acked only once processed, else its records are fetched again after the seek that follows.
            if message.acked or not message.processed:
                return False
            message.acked = True
            tp = message.tp
            try:
                if self.app.topics.acks_enabled_for(message.topic):
                    committed = self._committed_offset[tp]
                    acked_index = self._acked_index[tp]
                    low = message.first_offset if committed is None else max(committed, message.first_offset)
                    fresh = [offset for offset in range(low, message.offset + 1) if offset not in acked_index]
                    acked_index.update(fresh)
                    self._acked[tp].extend(fresh)
                    self._n_acked += len(fresh)
                self._unacked_messages.discard(message)
                return True
            finally:
                notify(self._waiting_for_ack)

    def _new_offset(self, tp: TP) -> int | None:
        acked = self._acked[tp]
        if not acked:
            return None
        gaps = self._gap[tp]
        if gaps:  # gaps (offsets that hold no record) count as acked once the acks reach them
            top = max(acked)
            spans = sorted(gaps.overlap(0, top), key=lambda interval: interval.begin)
            if spans:
                filled = [offset for span in spans for offset in range(span.begin, span.end)]
                acked.extend(filled)
                gaps.chop(0, max(filled[-1], top + 1))
        acked.sort()
        head = self._committed_offset[tp]
        if head is None:
            head = self._first_delivered.get(tp)
        if head is None or acked[0] > head:
            return None  # an unacked record (or one not yet delivered) sits before the acked ones
        run = next(consecutive_numbers(acked))
        acked[: len(run)] = []
        self._acked_index[tp].difference_update(run)
        return run[-1] + 1


def keep_queued_events_on_resume(app: faust.App, stream: faust.StreamT) -> None:
    """Stop `app.flow_control.resume()` from emptying this stream's queue of fetched batches.

    At the end of a table recovery Faust resumes the source partitions and awaits the seek to the committed offsets
    *before* it resumes flow control, which clears every stream queue: batches fetched in that window would be
    dropped, unprocessed and unacked, while the consumer's read position moved past them -- commits would then
    stall at the hole (agents/batching.py never commits past an unacked record) until the next rebalance. The
    clearing is not needed: batches of an older consumer generation are skipped by Faust's iterator, and a skipped
    batch is never acked (`BatchingConsumer.ack`).
    """
    queues = getattr(app.flow_control, "_queues", None)
    if queues is None:  # a Faust/mode without the managed queue set: nothing to detach, but say so
        log.warning("cannot detach the %s stream queue from flow control; a recovery may stall commits", stream)
        return
    queues.discard(stream.channel.queue)


class PromptFetchConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with the fetcher's prefetch backoff and fetch wait of the app (module
    docstring). Neither is a constructor option Faust passes on, so both are set on the started fetcher."""

    async def on_start(self) -> None:
        await super().on_start()
        wanted: dict[str, float | int] = {}
        backoff = getattr(self.app, "prefetch_backoff_s", None)
        if backoff is not None:
            wanted["_prefetch_backoff"] = backoff
        fetch_wait = getattr(self.app, "fetch_max_wait_s", None)
        if fetch_wait is not None:
            wanted["_fetch_max_wait_ms"] = _wait_ms(fetch_wait)
        fetcher = getattr(self._consumer, "_fetcher", None)
        _require(fetcher, wanted)
        for attribute, value in wanted.items():
            setattr(fetcher, attribute, value)
        held_wait = getattr(self.app, "fetch_max_wait_requests_held_s", None)
        tune_fetch_actions(fetcher, getattr(self.app, "latency_topics", frozenset()),
                           None if held_wait is None else _wait_ms(held_wait))


def _wait_ms(seconds: float) -> int:
    """A fetch wait as aiokafka counts it, in ms; 0 would make an idle worker spin on empty fetches."""
    return max(1, round(seconds * 1000))


def _require(fetcher: Any, attributes: Iterable[str]) -> None:
    """Stop the start loudly when aiokafka's fetcher lacks what agents/batching.py sets or wraps on it."""
    for attribute in attributes:
        if fetcher is None or not hasattr(fetcher, attribute):
            raise RuntimeError(f"aiokafka's fetcher has no {attribute} any more: check agents/batching.py "
                               "against this aiokafka version")


def tune_fetch_actions(fetcher: Any, latency_topics: frozenset[str], held_wait_ms: int | None) -> None:
    """Wrap the fetcher's `_get_actions_per_node` (what its routine calls to build the next fetches) with two changes.

    1. **No sleep behind a fetch that already finished.** aiokafka keeps one fetch in flight per broker: a node is
       in `_in_flight` from the fetch task's start until a done-callback of that task removes it. The routine can
       see the task done and drop it from its pending tasks before that callback ran (likely when a consumed
       partition woke it in the same loop turn as the fetch finished; seen: no task pending, one node in flight):
       the node still looks busy, no fetch is built, and with nothing pending the routine sleeps its
       `fetcher_timeout` (0.2 s) unless another partition is consumed. Under a 5,000/s replay that held requests for
       190-210 ms (`bench.diagnostics`). A node counts as busy here only while some pending task is still running.
    2. **A short broker wait while a request waits to be consumed** (`held_wait_ms`, for the app's latency topics):
       aiokafka leaves a partition with buffered records out of the next fetch; a fetch sent between a request's
       arrival in the buffer and the worker taking it goes without that request partition, and when the partitions
       it does ask for are idle the broker holds it for the whole fetch wait -- the next request on that partition
       waited for it (34-45 ms of the slowest table hits under the replay). Fetches built then ask the broker to hold
       them at most `held_wait_ms`; nothing changes while no request is buffered.
    """
    _require(fetcher, ("_get_actions_per_node", "_records", "_fetch_max_wait_ms", "_in_flight", "_pending_tasks"))
    build = fetcher._get_actions_per_node
    normal_wait_ms = fetcher._fetch_max_wait_ms
    short_wait_ms = normal_wait_ms if held_wait_ms is None else min(held_wait_ms, normal_wait_ms)

    def actions_per_node(assignment: Any) -> Any:
        if fetcher._in_flight and all(task.done() for task in fetcher._pending_tasks):
            fetcher._in_flight.clear()  # the done-callbacks that would clear it have not run yet
        if latency_topics:
            held = any(tp.topic in latency_topics for tp in fetcher._records)
            fetcher._fetch_max_wait_ms = short_wait_ms if held else normal_wait_ms
        return build(assignment)

    fetcher._get_actions_per_node = actions_per_node


class IdempotentProducer(aiokafka_driver.Producer):
    """Faust's aiokafka producer with idempotence on (acks=all): no batch of a partition is written after one of
    the same partition failed for good, so a table's changelog stays a prefix of what the worker wrote."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class BatchingTransport(aiokafka_driver.Transport):
    Consumer = BatchingConsumer
    Producer = IdempotentProducer


class ExplorerApp(faust.App):
    """faust.App with the batching transport; `batch_topics` names the topics whose agents take RecordBatches."""

    batch_topics: frozenset[str] = frozenset()
    latency_topics: frozenset[str] = frozenset()  # fetched records of these are taken first
    prefetch_backoff_s: float | None = None  # None: aiokafka's own (PromptFetchConsumerThread)
    fetch_max_wait_s: float | None = None  # None: Faust's 1.5 s (PromptFetchConsumerThread)
    fetch_max_wait_requests_held_s: float | None = None  # None: the fetch wait, requests buffered or not
    max_queued_records: int | None = None  # None: no bound on the bulk topics' fetched, unacked records
    max_queued_requests: int | None = None  # None: no bound on the latency topics' fetched, unacked records

    def use_batches_for(self, topics: Iterable[str]) -> None:
        self.batch_topics = frozenset(self.batch_topics | set(topics))

    def serve_first(self, topics: Iterable[str]) -> None:
        self.latency_topics = frozenset(self.latency_topics | set(topics))

    def _new_transport(self) -> BatchingTransport:
        return BatchingTransport(self.conf.broker_consumer, self, loop=self.loop)

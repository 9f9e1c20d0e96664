"""The recommender agent: turns `recommendation-requests` into grounded recommendations on `recommendations`.

For each request (models/recommend.py has the decisions and the documented cold-start answer):

1. the user's two latest distinct clusters and recent items come from the partition state (agents/state.py): a
   request is served by the worker holding the user's partition. A request that arrived on another partition (the
   producer did not partition by murmur2) is forwarded to the right partition of the requests' repartition topic,
   keeping its timestamp, and answered there (agents/routing.py);
2. the novel cluster comes from the pair table (in memory, kept fresh by agents/pair_refresh.py), else from the LLM
   with freshly retrieved knowledge (bounded by `llm_timeout_s`), else from the fallback; with ``novel_choice``
   "llm-x-sequence" a row's distribution is multiplied by the user's sequence-model mass per cluster first;
3. the sequence model ranks that cluster's items, the user's items excluded.

Duplicates: every answer is kept per user (the `responses` table, last `responses_kept` request ids) and its
changelog record is delivered *before* the recommendation is sent, so a redelivered or re-sent request gets the
stored answer again (same content), never a second, different one. Bad requests go to `interactions.dlq` with the
reason. A batch of requests is acked once every answer, forward and dead letter of it is delivered; requests of a
batch run concurrently (at most `recommender_concurrency`), and batches are pipelined, so a table hit never waits
behind another request's LLM call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from agents.batching import RecordBatch, SourceRecord, keep_queued_events_on_resume
from agents.priority import Priority
from agents.outbox import Outbox, OutboxUnit
from agents.routing import ORIGIN_HEADER, PartitionOf, header, origin_of
from models.pair_table import infer
from models.recommend import FALLBACK, LLM, TABLE, fallback_cluster, grounded_items, llm_times_sequence
from models.recommend import recommendation as make_recommendation
from streams import codec
from streams.dead_letters import dead_letter
from streams.records import RecommendationRequest
from streams.validation import Rejection, validate_request

if TYPE_CHECKING:
    import faust

    from agents.health import Health
    from agents.serving import Serving
    from agents.state import StateTable
    from streams.metrics import Metrics
    from streams.settings import Settings

log = logging.getLogger(__name__)

RESPONSES_TABLE = "responses"


@dataclass(frozen=True)
class RequestTopics:
    requests: str
    repartition: str
    recommendations: str
    dlq: str


@dataclass(frozen=True)
class Choice:
    novel: str
    source: str
    model_version: str  # "<llm identity>|<sequence model version>" of what produced this very answer
    knowledge_version: str
    scores: tuple[tuple[str, float], ...] = ()  # the row's distribution ("llm-x-sequence"), when it has one
    temperature: float = 1.0


class Responses:
    """Answered requests per user (a Faust table; changelog partition = the user's state partition)."""

    def __init__(self, table: Any, kept: int) -> None:
        self.table = table
        self.kept = kept

    def answer(self, user_id: str, request_id: str) -> bytes | None:
        known = self.table.data.get(user_id)
        stored = known["answers"].get(request_id) if known else None
        return stored.encode() if stored is not None else None

    def remember(self, user_id: str, request_id: str, value: bytes) -> tuple[bytes, bytes]:
        """Keep the answer; returns the changelog record (key, value) that makes it durable."""
        known = self.table.data.get(user_id) or {"ids": [], "answers": {}}
        ids = [*known["ids"], request_id][-self.kept:]
        answers = {rid: known["answers"].get(rid) for rid in ids[:-1]}
        answers[request_id] = value.decode()
        entry = {"ids": ids, "answers": answers}
        self.table.data[user_id] = entry
        return orjson.dumps(user_id), orjson.dumps(entry)

    @property
    def changelog_topic(self) -> str:
        return self.table.changelog_topic.get_topic_name()


class RequestHandler:
    """Answers one request (no Kafka here beyond the outbox units it fills)."""

    def __init__(self, settings: Settings, states: StateTable, serving: Serving, metrics: Metrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.states = states
        self.serving = serving
        self.metrics = metrics
        self.clock = clock

    async def choose(self, history: list[str], waited_s: float) -> Choice:
        """The novel cluster and where it came from. `waited_s`: how long the request was queued before this worker
        took it; past `llm_max_queue_wait_s` a miss skips the LLM (a backlog drains through the fallback instead of
        every later request waiting longer still, and expiring)."""
        serving, settings, metrics = self.serving, self.settings, self.metrics
        sequence = serving.sequence_version()
        pair = (history[0], history[1]) if len(history) == 2 else None
        if pair is not None:
            hit = serving.cache.lookup(pair)
            if hit is not None:
                return Choice(hit.novel, TABLE, f"{hit.model_version}|{sequence}", hit.knowledge_version,
                              hit.scores, hit.temperature)
        top_next, trending, knowledge_version = await serving.io(serving.retrieve, pair, history)
        predictor = serving.predictor
        if pair is not None and predictor is not None and waited_s > settings.llm_max_queue_wait_s:
            metrics.llm_failures.labels("backlog").inc()
        elif pair is not None and predictor is not None:
            try:
                row = await asyncio.wait_for(
                    serving.llm_for_request(infer, predictor, pair, top_next, trending, knowledge_version,
                                            time.time, settings.scored_pairs),
                    timeout=settings.llm_timeout_s)
            except asyncio.TimeoutError:
                metrics.llm_failures.labels("timeout").inc()
            except Exception:
                metrics.llm_failures.labels("error").inc()
                log.exception("LLM inference failed for pair %s", pair)
            else:
                serving.cache.put(row)
                serving.pending_rows.append(row)
                # Labelled with the model that produced this row, even if another was swapped in meanwhile.
                return Choice(row.novel, LLM, f"{row.model_version}|{sequence}", knowledge_version, row.scores,
                              row.temperature)
        llm = predictor.model_version if predictor is not None else "none"
        novel = fallback_cluster(history, top_next, trending, serving.clusters)
        return Choice(novel, FALLBACK, f"{llm}|{sequence}", knowledge_version)

    async def answer(self, request: RecommendationRequest, partition: int, waited_s: float) -> bytes:
        user = self.states.partition(partition).user(request.user_id)
        history = list(user["t"]) if user else []
        recent = list(user["i"]) if user else []
        choice = await self.choose(history, waited_s)
        serving = self.serving
        novel = choice.novel
        if choice.scores and self.settings.scored_pairs and serving.sequence is not None and serving.mass is not None:
            # the row's calibrated distribution x this user's sequence mass (models/recommend.py), one SASRec pass,
            # on the event loop: ~1 ms of CPU that waited ~25 ms for the GIL on the I/O thread while the loop
            # processed a steady stream of small ingest batches (bench.recommend_latency --replay-rate 5000)
            novel, items = llm_times_sequence(serving.sequence, serving.mass, choice.scores, choice.temperature,
                                              serving.members, recent, request.k)
        else:
            items = await serving.io(grounded_items, serving.sequence, serving.members.get(novel, []), recent,
                                     request.k)
        made = make_recommendation(request, history, novel, serving.clusters, items, choice.source,
                                   choice.model_version, choice.knowledge_version)
        self.metrics.recommendations_out.labels(choice.source).inc()
        return codec.dumps(made)


class RecommenderAgent:
    def __init__(self, settings: Settings, topics: RequestTopics, handler: RequestHandler, responses: Responses,
                 outbox: Outbox, ack: Callable[[RecordBatch], Any], metrics: Metrics, health: Health,
                 partitions_for: Callable[[str], Awaitable[int]], clock: Callable[[], float] = time.time,
                 priority: Priority | None = None) -> None:
        self.settings = settings
        self.topics = topics
        self.handler = handler
        self.priority = priority or Priority()
        self.responses = responses
        self.outbox = outbox
        self.ack = ack
        self.metrics = metrics
        self.health = health
        self.partitions_for = partitions_for
        self.clock = clock
        self.partition_of = PartitionOf(settings.interactions_partitions)
        self._slots = asyncio.Semaphore(settings.recommender_concurrency)
        self._batches = asyncio.Semaphore(64)  # open batches: back-pressure on a burst
        self._user_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()
        self._misrouted_logged_at = -1e9

    async def handle(self, batch: RecordBatch) -> None:
        """Start the batch's requests and return; the batch is acked when all of them are delivered."""
        await self._batches.acquire()
        self.priority.enter()  # bulk work on the loop waits (a little) while requests are answered
        task = asyncio.get_running_loop().create_task(self._batch(batch))
        task.add_done_callback(lambda _: self.priority.leave())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _batch(self, batch: RecordBatch) -> None:
        where = f"request batch {batch.topic}:{batch.partition}@{batch.first_offset}..{batch.offset}"
        try:
            unit = self.outbox.unit()  # forwards and dead letters of the batch
            jobs = []
            for record in batch.records:
                request = await self._admit(unit, batch, record)
                if request is not None:
                    jobs.append(self._request(request, batch.partition, record))
            await unit.send()
            await asyncio.gather(unit.delivered(), *jobs)
        except Exception as exc:
            await self.health.fail(where, exc)
            return
        finally:
            self._batches.release()
        self.ack(batch)

    async def _admit(self, unit: OutboxUnit, batch: RecordBatch, record: SourceRecord
                     ) -> RecommendationRequest | None:
        """The request to answer here, or None when it was dead-lettered or forwarded."""
        metrics = self.metrics
        metrics.requests_in.inc()
        request = validate_request(record.key, record.value, self.settings.max_event_bytes)
        if isinstance(request, Rejection):
            await self._reject(unit, record, request.code, str(request))
            return None
        age = self.clock() - record.timestamp / 1000
        if age > self.settings.request_max_age_s:
            await self._reject(unit, record, "expired",
                               f"expired: the request is {age:.0f}s old, over request_max_age_s="
                               f"{self.settings.request_max_age_s:g} (a consumer group new to the topic, or a "
                               "backlog): it is not answered again")
            return None
        target = self.partition_of(record.key)  # type: ignore[arg-type]  # validated: key == user_id
        if target != batch.partition:
            if batch.topic == self.topics.repartition:
                await self._reject(unit, record, "wrong_partition",
                                   f"wrong_partition: a rerouted request for partition {target} arrived on "
                                   f"partition {batch.partition}")
                return None
            unit.add(self.topics.repartition, target, record.key, record.value,
                     [(ORIGIN_HEADER, origin_of(record.topic, record.partition, record.offset))],
                     timestamp_ms=record.timestamp)
            metrics.events_misrouted.labels(self.topics.requests).inc()
            self._log_misrouted()
            return None
        if batch.topic == self.topics.repartition:
            metrics.events_rerouted_in.labels(self.topics.requests).inc()
        return request

    async def _request(self, request: RecommendationRequest, partition: int, record: SourceRecord) -> None:
        started = time.monotonic()
        self.metrics.request_wait_seconds.observe(max(0.0, self.clock() - record.timestamp / 1000))
        serving = self.handler.serving
        await serving.ready.wait()
        async with self._slots, self._user_lock(request.user_id):
            stored = self.responses.answer(request.user_id, request.request_id)
            if stored is not None:
                self.metrics.duplicate_requests.inc()
                value, source = stored, "duplicate"
            else:
                try:
                    value = await self.handler.answer(request, partition, self.clock() - record.timestamp / 1000)
                except Exception as exc:  # a bug must not stop the stream or lose the request
                    log.exception("request %s failed", request.request_id)
                    unit = self.outbox.unit()
                    await self._reject(unit, record, "processing_error",
                                       f"processing_error: {type(exc).__name__}: {exc}")
                    await unit.send()
                    await unit.delivered()
                    return
                # Durable before the answer leaves: a crash after this replays the stored answer, never a new one.
                durable = self.outbox.unit()
                durable.add(self.responses.changelog_topic, partition,
                            *self.responses.remember(request.user_id, request.request_id, value))
                await durable.send()
                await durable.delivered()
                source = orjson.loads(value)["source"]
            out = self.outbox.unit()
            partitions = await self.partitions_for(self.topics.recommendations)
            out.add(self.topics.recommendations, self.partition_of(request.user_id.encode()) % partitions,
                    request.user_id.encode(), value)
            await out.send()
            await out.delivered()
        self.metrics.request_seconds.labels(source).observe(time.monotonic() - started)

    @asynccontextmanager
    async def _user_lock(self, user_id: str):  # type: ignore[no-untyped-def]
        # Concurrent requests of one user must not both miss the answer cache.
        lock = self._user_locks.setdefault(user_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self._user_locks.pop(user_id, None)

    async def _reject(self, unit: OutboxUnit, record: SourceRecord, code: str, error: str) -> None:
        self.metrics.requests_rejected.labels(code).inc()
        origin = header(record.headers, ORIGIN_HEADER)
        value = dead_letter(record.topic, record.partition, record.offset, record.value, error,
                            self.settings.dead_letter_max_raw_bytes, origin.decode() if origin else None,
                            clock=self.clock)
        partitions = await self.partitions_for(self.topics.dlq)
        unit.add(self.topics.dlq, self.partition_of(record.key) % partitions if record.key else 0, record.key, value)

    def _log_misrouted(self) -> None:
        now = time.monotonic()
        if now - self._misrouted_logged_at >= 60.0:
            self._misrouted_logged_at = now
            log.warning("recommendation requests arrive on partitions other than their user's (the producer does "
                        "not partition by murmur2): rerouted through %s; explorer_events_misrouted_total{topic=%s} "
                        "counts them (logged at most once a minute)", self.topics.repartition, self.topics.requests)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def attach(app: faust.App, agent: RecommenderAgent, channel: faust.TopicT) -> None:
    @app.agent(channel, name="recommender")
    async def recommender(stream: faust.StreamT) -> None:
        keep_queued_events_on_resume(app, stream)
        async for event in stream.noack().events():
            await agent.handle(event.message)

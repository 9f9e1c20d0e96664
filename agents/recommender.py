"""The recommender agent: turns `recommendation-requests` into grounded recommendations on `recommendations`.

For each request (models/recommend.py has the decisions and the documented cold-start answer):

1. the user's two latest distinct clusters come from the transitions state and the recent items from the profiles
   state, both local: requests are co-partitioned with interactions (same key, same partition count), so the
   worker that counts a user's events also serves the user's requests;
2. the novel cluster comes from the pair table (in memory, kept fresh by agents/pair_refresh.py), else from the LLM
   with freshly retrieved knowledge (bounded by `llm_timeout_s`), else from the fallback;
3. the sequence model ranks that cluster's items, the user's items excluded.

Duplicates: every answer is kept per user (the `responses` table, last `responses_kept` request ids) and written to
its changelog *before* the recommendation is sent, so a redelivered or re-sent request gets the stored answer again
(same content), never a second, different one. Bad requests go to `interactions.dlq` with the reason.

Nothing heavy runs on the event loop: LanceDB reads and the sequence model run on one I/O thread, the LLM on its
own thread (one llama.cpp context is not thread-safe; the pair refresher shares it), and a hot swap's registry
check and model load on a third (models/model_loading.py), so a swap never stalls serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from agents.ingest import dead_letter, keep_queued_events_on_resume
from models.finetune.registry import current_model_path
from models.model_loading import ModelLoader
from models.pair_table import Pair, PairPrediction, PairTable, infer
from models.prompts import MAX_TOP_NEXT, MAX_TRENDING
from models.recommend import FALLBACK, LLM, NO_MODEL, TABLE, fallback_cluster, grounded_items, members_by_cluster
from models.recommend import recommendation as make_recommendation
from models.transitions import USER_PREFIX
from streams import codec
from streams.partitioning import murmur2_partition
from streams.records import RecommendationRequest
from streams.validation import Rejection, validate_request

if TYPE_CHECKING:
    import faust

    from agents.profiles import Profiles
    from agents.transitions import TransitionsRuntime
    from models.clusters import ClusterSet
    from models.knowledge import KnowledgeStore
    from models.llm import NovelClusterPredictor
    from models.sequence import SequenceRecommender
    from streams.app import AppContext

log = logging.getLogger(__name__)
T = TypeVar("T")

RESPONSES_TABLE = "responses"


class PairCache:
    """The pair table in memory: rows by model version; the current model's row wins, an older model's serves
    until the current one has answered the pair (hot swap)."""

    def __init__(self) -> None:
        self.current_version: str | None = None
        self.rows: dict[str, dict[Pair, PairPrediction]] = {}

    def lookup(self, pair: Pair) -> PairPrediction | None:
        if self.current_version is not None:
            row = self.rows.get(self.current_version, {}).get(pair)
            if row is not None:
                return row
        older = [rows[pair] for rows in self.rows.values() if pair in rows]
        return max(older, key=lambda row: row.updated_at) if older else None

    def current(self, pair: Pair) -> PairPrediction | None:
        return self.rows.get(self.current_version or "", {}).get(pair)

    def put(self, row: PairPrediction) -> None:
        rows = self.rows.setdefault(row.model_version, {})
        known = rows.get(row.pair)
        if known is None or known.updated_at <= row.updated_at:
            rows[row.pair] = row

    def merge(self, loaded: dict[str, dict[Pair, PairPrediction]]) -> None:
        for rows in loaded.values():
            for row in rows.values():
                self.put(row)

    def size(self) -> int:
        return len(self.rows.get(self.current_version or "", {}))


@dataclass
class Services:
    """The models and stores the recommender and the pair refresher use, loaded off the event loop."""

    context: AppContext
    clusters: ClusterSet
    cache: PairCache = field(default_factory=PairCache)
    predictor: NovelClusterPredictor | None = None
    sequence: SequenceRecommender | None = None
    knowledge: KnowledgeStore | None = None
    pairs: PairTable | None = None
    pending_rows: list[PairPrediction] = field(default_factory=list)  # inferred on a miss, written by the refresher
    llm_error: str | None = None
    members: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.io_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recommender-io")
        self.llm_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")
        # Request-time misses come before background pair refreshes on the one LLM thread: the refresher waits
        # for this event, which is clear while any request is waiting for (or using) the LLM.
        self.requests_waiting_for_llm = 0
        self.llm_free_for_refresh = asyncio.Event()
        self.llm_free_for_refresh.set()
        self.members = dict(members_by_cluster(self.clusters))
        self.ready = asyncio.Event()

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io_executor, fn, *args)

    async def llm(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.llm_executor, fn, *args)

    async def llm_for_request(self, fn: Callable[..., T], *args: Any) -> T:
        """`llm`, ahead of the background refresher (which waits while any request needs the LLM)."""
        self.requests_waiting_for_llm += 1
        self.llm_free_for_refresh.clear()
        # Issue 17: the LLM counts as taken until the CALL ends, not until the request stops waiting for it. A
        # request-time timeout (asyncio.wait_for) cancels only the wait: a call already running on the LLM thread
        # runs to its end, and the refresher must not be let in meanwhile. So the release is a done-callback of
        # the executor's own future (fired when the call finishes, or at once when a still-queued call is
        # cancelled by the timeout), never a `finally` of this coroutine.
        loop = asyncio.get_running_loop()
        call = self.llm_executor.submit(fn, *args)
        call.add_done_callback(lambda _: loop.is_closed() or loop.call_soon_threadsafe(self._request_left_llm))
        return await asyncio.wrap_future(call)

    def _request_left_llm(self) -> None:
        self.requests_waiting_for_llm -= 1
        if self.requests_waiting_for_llm == 0:
            self.llm_free_for_refresh.set()

    async def start(self) -> None:
        from models.knowledge import KnowledgeStore
        from models.sequence import SequenceModelNotTrained, load_current

        settings = self.context.settings
        self.knowledge = await self.io(lambda: KnowledgeStore.from_settings(settings, self.clusters.version))
        self.pairs = await self.io(lambda: PairTable.from_settings(settings, self.clusters.version))
        self.cache.merge(await self.io(self.pairs.load))
        try:
            self.sequence = await self.io(_load_sequence, load_current, settings)
        except SequenceModelNotTrained as exc:
            log.warning("%s; recommendations rank the cluster's items in catalogue order", exc)
        try:
            self.predictor = await self.llm(_load_predictor, settings, self.clusters)
            self.cache.current_version = self.predictor.model_version
        except Exception as exc:  # a missing or broken model: serve from the table and the fallback, say why
            self.llm_error = f"{type(exc).__name__}: {exc}"
            log.error("the LLM could not be loaded (%s): misses are answered by the fallback", self.llm_error)
        self.context.metrics.pair_table_rows.set(self.cache.size())
        self.ready.set()

    def model_version(self) -> str:
        llm = self.predictor.model_version if self.predictor else NO_MODEL
        sequence = self.sequence.version if self.sequence else NO_MODEL
        return f"{llm}|{sequence}"

    def retrieve(self, pair: Pair | None, history: list[str]) -> tuple[list[tuple[str, int]], list[str], str]:
        """(top next for the pair, trending clusters outside the history, knowledge version), on the I/O thread."""
        assert self.knowledge is not None
        top_next = self.knowledge.top_next(*pair, n=MAX_TOP_NEXT + 2) if pair else []
        trending = [c for c, _, _ in self.knowledge.trending(n=MAX_TRENDING + 2, exclude=history)]
        return top_next, trending, self.knowledge.knowledge_version()


def _load_sequence(load_current: Callable[..., Any], settings: Any) -> Any:
    import torch

    torch.set_num_threads(1)  # one request at a time on the I/O thread; more threads only contend with the LLM
    return load_current(settings)


def _load_predictor(settings: Any, clusters: ClusterSet) -> NovelClusterPredictor:
    return _load_predictor_from(settings, clusters, current_model_path(settings))


def _load_predictor_from(settings: Any, clusters: ClusterSet, path: str) -> NovelClusterPredictor:
    from models.llm import NovelClusterPredictor

    return NovelClusterPredictor(settings, clusters, model_path=path, n_threads=settings.llm_threads)


def register(app: faust.App, context: AppContext, clusters: ClusterSet, runtime: TransitionsRuntime,
             profiles: Profiles) -> Services:
    settings = context.settings
    metrics = context.metrics
    services = Services(context, clusters)
    # Issue 17: hot-swap checks and loads get a thread of their own (see watch_model).
    loader: ModelLoader[NovelClusterPredictor] = ModelLoader(
        settings, lambda path: _load_predictor_from(settings, clusters, path))
    responses = app.Table(RESPONSES_TABLE, default=None, partitions=settings.interactions_partitions, key_type=str,
                          help="Answered requests per user, re-sent to duplicates")
    topics = context.topics
    requests_topic = topics.requests.get_topic_name()
    user_locks: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def user_lock(user_id: str):  # type: ignore[no-untyped-def]
        # Concurrent requests of one user must not both miss the answer cache.
        lock = user_locks.setdefault(user_id, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                user_locks.pop(user_id, None)

    async def reject(message: Any, code: str, error: str) -> None:
        metrics.requests_rejected.labels(code).inc()
        value = dead_letter(message.topic, message.partition, message.offset, message.value, error)
        await topics.dlq.send(key=message.key, value=value)

    async def choose(request: RecommendationRequest, history: list[str], waited_s: float
                     ) -> tuple[str, str, str, str]:
        """(novel cluster, source, model version, knowledge version). `waited_s`: how long the request was queued
        before this worker took it; past `llm_max_queue_wait_s` a miss skips the LLM (a backlog drains through the
        fallback instead of every later request waiting longer still, and expiring)."""
        pair = (history[0], history[1]) if len(history) == 2 else None
        if pair is not None:
            hit = services.cache.lookup(pair)
            if hit is not None:
                sequence = services.sequence.version if services.sequence else NO_MODEL
                return hit.novel, TABLE, f"{hit.model_version}|{sequence}", hit.knowledge_version
        top_next, trending, knowledge_version = await services.io(services.retrieve, pair, history)
        if pair is not None and services.predictor is not None and waited_s > settings.llm_max_queue_wait_s:
            metrics.llm_failures.labels("backlog").inc()
        elif pair is not None and services.predictor is not None:
            try:
                row = await asyncio.wait_for(
                    services.llm_for_request(infer, services.predictor, pair, top_next, trending, knowledge_version),
                    timeout=settings.llm_timeout_s)
            except asyncio.TimeoutError:
                metrics.llm_failures.labels("timeout").inc()
            except Exception:
                metrics.llm_failures.labels("error").inc()
                log.exception("LLM inference failed for pair %s", pair)
            else:
                services.cache.put(row)
                services.pending_rows.append(row)
                # Issue 17: labelled with the model that inferred THIS row (a swap may have replaced the serving
                # predictor while the call ran), as a table hit is.
                sequence = services.sequence.version if services.sequence else NO_MODEL
                return row.novel, LLM, f"{row.model_version}|{sequence}", knowledge_version
        novel = fallback_cluster(history, top_next, trending, clusters)
        return novel, FALLBACK, services.model_version(), knowledge_version

    async def answer(request: RecommendationRequest, partition: int, waited_s: float) -> bytes:
        state = runtime.processor.store_for(partition).get(USER_PREFIX + request.user_id)
        history = list(state["t"]) if state else []
        profile = profiles.get(request.user_id)
        recent = list(profile["items"]) if profile else []
        novel, source, model_version, knowledge_version = await choose(request, history, waited_s)
        items = await services.io(grounded_items, services.sequence, services.members.get(novel, []), recent,
                                  request.k)
        made = make_recommendation(request, history, novel, clusters, items, source, model_version,
                                   knowledge_version)
        metrics.recommendations_out.labels(source).inc()
        return codec.dumps(made)

    async def remember(request: RecommendationRequest, partition: int, value: bytes) -> None:
        known = responses.data.get(request.user_id) or {"ids": [], "answers": {}}
        ids = [*known["ids"], request.request_id][-settings.responses_kept:]
        answers = {rid: known["answers"].get(rid) for rid in ids[:-1]}
        answers[request.request_id] = value.decode()
        entry = {"ids": ids, "answers": answers}
        responses.data[request.user_id] = entry
        # Durable before the answer leaves: a crash after this replays the stored answer, never a new one.
        delivery = await responses.changelog_topic.send(
            key=request.user_id, value=entry, partition=partition, key_serializer=responses.key_serializer,
            value_serializer=responses.value_serializer)
        await delivery

    async def handle(message: Any) -> None:
        started = time.monotonic()
        metrics.requests_in.inc()
        request = validate_request(message.key, message.value, settings.max_event_bytes)
        if isinstance(request, Rejection):
            await reject(message, request.code, str(request))
            return
        age = time.time() - message.timestamp
        if age > settings.request_max_age_s:
            await reject(message, "expired", f"expired: the request is {age:.0f}s old, over request_max_age_s="
                                             f"{settings.request_max_age_s:g} (a consumer group new to the topic, or a "
                                             "backlog): it is not answered again")
            return
        partition = murmur2_partition(request.user_id.encode(), settings.interactions_partitions)
        if partition != message.partition:
            await reject(message, "wrong_partition",
                         f"wrong_partition: the request for user {request.user_id!r} arrived on partition "
                         f"{message.partition} but the user's state is on partition {partition}: key requests by "
                         "user_id and produce them with Kafka's default (murmur2) partitioner")
            return
        await services.ready.wait()
        async with user_lock(request.user_id):
            known = responses.data.get(request.user_id)
            stored = known["answers"].get(request.request_id) if known else None
            if stored is not None:
                metrics.duplicate_requests.inc()
                value, source = stored.encode(), "duplicate"
            else:
                try:
                    value = await answer(request, partition, time.time() - message.timestamp)
                except Exception as exc:  # a bug must not stop the stream or lose the request
                    log.exception("request %s failed", request.request_id)
                    await reject(message, "processing_error", f"processing_error: {type(exc).__name__}: {exc}")
                    return
                await remember(request, partition, value)
                source = orjson.loads(value)["source"]
            delivery = await topics.recommendations.send(key=request.user_id.encode(), value=value)
            await delivery
        metrics.request_seconds.labels(source).observe(time.monotonic() - started)

    @app.agent(topics.requests, name="recommender", concurrency=settings.recommender_concurrency)
    async def recommender(stream: faust.StreamT) -> None:
        keep_queued_events_on_resume(app, stream)  # else requests fetched during a recovery would be dropped
        async for event in stream.events():
            await handle(event.message)

    @app.task
    async def load_services() -> None:
        await services.start()

    @app.timer(settings.model_watch_interval_s)
    async def watch_model() -> None:
        # Hot swap: a newly released model (models/finetune/registry.py) is loaded beside the serving one, then
        # swapped in between two LLM calls. Pair rows of the old model keep serving until the refresher has
        # re-inferred them for the new one; answered requests stay answered (the responses table).
        if not services.ready.is_set() or services.predictor is None:
            return
        # Issue 17: the registry check and the load run on the loader's own thread (models/model_loading.py), never
        # on the I/O thread that serves LanceDB reads and grounding; the released model is compared by identity
        # (version + full digest), not by path, so A -> B -> rollback to A swaps each time.
        try:
            release = await asyncio.wrap_future(loader.submit_check(services.predictor.identity))
        except Exception:
            log.exception("checking the registry for a released LLM failed; the current one keeps serving")
            return
        if release is None:
            return
        path = release.path
        log.info("a new LLM was released: %s (%s); loading it beside the serving one", path, release.identity.label)
        try:
            fresh = await asyncio.wrap_future(loader.submit_load(release))
        except Exception:
            log.exception("the released model %s could not be loaded; the current one keeps serving", path)
            return
        old = services.predictor
        services.predictor = fresh
        services.cache.current_version = fresh.model_version
        metrics.pair_table_rows.set(services.cache.size())
        await services.llm(old.close)  # queued after any call still using it
        log.info("now serving LLM %s", fresh.model_version)

    log.debug("recommender serves %s", requests_topic)
    return services

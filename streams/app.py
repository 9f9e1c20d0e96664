"""The composition root of a worker: one Faust app, configured from one Settings object, with every agent built
here and wired to its dependencies (the agents themselves take everything they use as arguments)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import faust

from agents import ingest, knowledge_sync, pair_refresh, recommender
from agents.acks import Acker
from agents.batching import BatchingConsumer, ExplorerApp
from agents.health import Health
from agents.priority import Priority
from agents.outbox import Outbox
from agents.state import StateTable
from streams import codec
from streams.failpoints import Failpoints
from streams.gc_freeze import SurvivorFreezer, freeze_long_lived
from streams.kafka_config import faust_broker_credentials
from streams.metrics import Metrics
from streams.settings import Settings
from streams.topics import (
    INTERACTIONS,
    INTERACTIONS_DLQ,
    RECOMMENDATION_REQUESTS,
    RECOMMENDATIONS,
    consumer_group,
    repartition_topic_name,
    topic_name,
)

log = logging.getLogger(__name__)

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}


@dataclass
class AppContext:
    """What the web pages and the tests read: settings, metrics, health and the agents. Attached as `app.explorer`."""

    settings: Settings
    metrics: Metrics
    health: Health
    topics: dict[str, str] = field(default_factory=dict)
    clusters_version: str | None = None  # set when the state is counted
    states: StateTable | None = None
    ingest: ingest.IngestAgent | None = None
    recommender: recommender.RecommenderAgent | None = None
    started_at: float = field(default_factory=time.time)


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def serving_clusters(settings: Settings):  # -> ClusterSet | None
    from models.clusters import ClustersNotBuilt, load_serving, load_version

    try:
        if settings.serving_clusters_version:
            return load_version(settings, settings.serving_clusters_version)
        return load_serving(settings)
    except ClustersNotBuilt as exc:
        log.warning("transitions are not counted: %s", exc)
        return None


def create_app(settings: Settings, *, with_agents: bool = True) -> faust.App:
    codec.register_faust_codec()
    clusters = serving_clusters(settings) if with_agents else None
    app_id = consumer_group(settings, clusters.version if clusters else None)
    # One folder per worker: RocksDB locks each partition's files, so two workers of a host sharing a data dir must
    # not share them (found by the two-worker fault test); a restarted worker finds its own state under its own id.
    local_id = settings.resolved_instance_id() or f"port-{settings.web_port}"
    datadir = settings.resolved_data_dir() / "faust" / app_id / local_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level itself
    app = ExplorerApp(
        app_id,
        broker=broker_urls(settings.kafka_bootstrap),
        broker_credentials=faust_broker_credentials(settings),
        store="memory://",
        datadir=str(datadir),
        autodiscover=False,
        topic_partitions=settings.interactions_partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        consumer_group_instance_id=settings.resolved_instance_id(),
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.broker_session_timeout_s / 3),
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # One RecordBatch per fetched run of a partition (agents/batching.py): fetch runs of thousands of records.
        stream_buffer_maxsize=4096,  # also the bound of the changelog queue table recovery reads from
        broker_max_poll_records=settings.stream_batch_size,
        producer_linger=settings.producer_linger_s,
        producer_max_batch_size=settings.producer_max_request_bytes,
        producer_max_request_size=settings.producer_max_request_bytes,
    )
    app.prefetch_backoff_s = settings.consumer_prefetch_backoff_s
    app.fetch_max_wait_s = settings.consumer_fetch_max_wait_s
    app.fetch_max_wait_requests_held_s = settings.consumer_fetch_max_wait_requests_held_s
    app.max_queued_records = settings.consumer_max_queued_records
    app.max_queued_requests = settings.consumer_max_queued_requests
    metrics = Metrics()
    health = Health(recent_s=settings.health_degraded_window_s, exit_deadline_s=settings.fatal_exit_deadline_s)
    context = AppContext(settings=settings, metrics=metrics, health=health)
    app.explorer = context  # type: ignore[attr-defined]
    health.bind_crash(app.crash)
    _register_web(app, context)
    if with_agents:
        _build_agents(app, context, clusters)
    return app


def _build_agents(app: ExplorerApp, context: AppContext, clusters: Any) -> None:
    settings, metrics, health = context.settings, context.metrics, context.health
    group = app.conf.id
    names = {
        "interactions": topic_name(settings, INTERACTIONS),
        "interactions_repartition": repartition_topic_name(group, INTERACTIONS),
        "dlq": topic_name(settings, INTERACTIONS_DLQ),
        "requests": topic_name(settings, RECOMMENDATION_REQUESTS),
        "requests_repartition": repartition_topic_name(group, RECOMMENDATION_REQUESTS),
        "recommendations": topic_name(settings, RECOMMENDATIONS),
    }
    context.topics = names
    app.use_batches_for([names["interactions"], names["interactions_repartition"], names["requests"],
                         names["requests_repartition"]])
    app.serve_first([names["requests"], names["requests_repartition"]])

    outbox = Outbox(lambda: app.producer._ensure_producer())
    partitions_for = _partition_counts(app)
    priority = Priority(max_share=settings.request_priority_max_share)  # requests before bulk ingestion
    failpoints = Failpoints(settings.failpoints)
    acker = Acker(lambda batch: app.consumer.ack_processed(batch), health, failpoint=failpoints.hit)
    states = None
    if clusters is not None:
        # A failpoint (tests, drills) can make event processing raise for a while (streams/failpoints.py).
        cluster_of = failpoints.wrap("apply", clusters.cluster_of)
        states = StateTable(app, settings, clusters.version, cluster_of)
        context.states = states
        context.clusters_version = clusters.version
    ingest_agent = ingest.IngestAgent(
        settings,
        ingest.IngestTopics(names["interactions"], names["interactions_repartition"], names["dlq"], names["requests"]),
        states, outbox, acker, metrics, health, partitions_for, priority=priority)
    context.ingest = ingest_agent
    ingest.attach(app, ingest_agent, app.topic(names["interactions"], names["interactions_repartition"], **RAW))
    syncer = None
    if clusters is not None and states is not None:
        syncer = _knowledge_sync(app, context, clusters, states)
        if settings.recommendations_enabled:
            context.recommender = _recommender(app, context, clusters, states, outbox, partitions_for, names,
                                               priority)
    if settings.gc_freeze_survivors:
        _freeze_survivors(app, settings, metrics)
    _register_upkeep(app, context, acker, syncer)


def _knowledge_sync(app: ExplorerApp, context: AppContext, clusters: Any, states: StateTable
                    ) -> knowledge_sync.KnowledgeSync:
    from models.knowledge import KnowledgeStore

    settings = context.settings

    def open_store() -> KnowledgeStore:
        store = KnowledgeStore.from_settings(settings, clusters.version)
        store.upsert_clusters(clusters)
        return store

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knowledge-writer")
    syncer = knowledge_sync.KnowledgeSync(states, open_store, executor, context.metrics, context.health)
    knowledge_sync.attach(app, syncer, settings.knowledge_sync_interval_s)
    return syncer


def _recommender(app: ExplorerApp, context: AppContext, clusters: Any, states: StateTable, outbox: Outbox,
                 partitions_for: Any, names: dict[str, str], priority: Priority) -> recommender.RecommenderAgent:
    from agents.serving import Loaders, Serving
    from models.finetune.registry import current_model_path
    from models.knowledge import KnowledgeStore
    from models.model_loading import ModelLoader
    from models.pair_table import PairTable

    settings, metrics = context.settings, context.metrics
    # Answers get a producer of their own: behind the ingest's changelog batches (one request in flight per broker
    # on a producer) a table hit waited for megabytes of state to be sent first during a catch-up.
    answers_producer: dict[str, Any] = {}

    async def start_answers_producer() -> None:
        producer = app.producer._new_producer()
        await producer.start()
        answers_producer["producer"] = producer

    @app.on_before_shutdown.connect
    async def stop_answers_producer(app: Any, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        producer = answers_producer.pop("producer", None)
        if producer is not None:
            await producer.stop()

    answers_outbox = Outbox(lambda: answers_producer.get("producer") or app.producer._ensure_producer())

    def load_sequence() -> Any:
        import torch

        from models.sequence import load_current

        torch.set_num_threads(1)  # one request at a time on the I/O thread; more threads only contend with the LLM
        return load_current(settings)

    def load_predictor(path: str) -> Any:
        from models.llm import NovelClusterPredictor

        return NovelClusterPredictor(settings, clusters, model_path=path, n_threads=settings.llm_threads)

    loaders = Loaders(
        knowledge=lambda: KnowledgeStore.from_settings(settings, clusters.version),
        pairs=lambda: PairTable.from_settings(settings, clusters.version),
        sequence=load_sequence, predictor=load_predictor,
        current_model_path=lambda: current_model_path(settings))
    serving = Serving(settings, clusters, loaders, metrics)
    responses = recommender.Responses(
        app.Table(recommender.RESPONSES_TABLE, default=None, partitions=settings.interactions_partitions,
                  key_type=str, help="Answered requests per user, re-sent to duplicates"),
        settings.responses_kept)
    handler = recommender.RequestHandler(settings, states, serving, metrics)
    agent = recommender.RecommenderAgent(
        settings, recommender.RequestTopics(names["requests"], names["requests_repartition"],
                                            names["recommendations"], names["dlq"]),
        handler, responses, answers_outbox, lambda batch: app.consumer.ack_processed(batch), metrics, context.health,
        partitions_for, priority=priority)
    recommender.attach(app, agent, app.topic(names["requests"], names["requests_repartition"], **RAW))

    interactions = names["interactions"]

    def owned() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == interactions}

    def lag() -> float:
        return sum(child._value.get() for child in metrics.consumer_lag._metrics.values())

    refresher = pair_refresh.PairRefresher(settings, serving, metrics, owned, lag)
    watcher = pair_refresh.ModelWatcher(serving, ModelLoader(settings, load_predictor), metrics)
    pair_refresh.attach(app, refresher, watcher, serving, settings.model_watch_interval_s, start_answers_producer)
    if settings.gc_freeze_after_start:
        @app.task
        async def freeze_after_start() -> None:  # the models are the last long-lived objects a worker loads
            await serving.ready.wait()
            freeze_long_lived("the worker's models are loaded")
    return agent


def _freeze_survivors(app: ExplorerApp, settings: Settings, metrics: Metrics) -> None:
    freezer = SurvivorFreezer()

    @app.task
    async def install_freezer() -> None:
        freezer.install()

    @app.on_before_shutdown.connect
    async def uninstall_freezer(app: faust.App, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        freezer.uninstall()

    reported = [0]

    @app.timer(2.0)
    async def report_freezes() -> None:  # not gc.get_freeze_count(): it walks every frozen object (~50 ms)
        metrics.gc_survivor_freezes.inc(freezer.freezes - reported[0])
        reported[0] = freezer.freezes

    if settings.gc_thaw_every_s:
        @app.timer(settings.gc_thaw_every_s)
        async def thaw_frozen_state() -> None:
            metrics.gc_thawed_garbage.inc(freezer.thaw())


def _partition_counts(app: ExplorerApp) -> Any:
    """Partition count of a topic from the producer's metadata (cached: topics do not shrink)."""
    known: dict[str, int] = {}

    async def partitions_for(topic: str) -> int:
        count = known.get(topic)
        if count is None:
            producer = app.producer._ensure_producer()
            await producer.client._wait_on_metadata(topic)
            count = known[topic] = len(producer.client.cluster.partitions_for_topic(topic) or {0})
        return count

    return partitions_for


def _register_upkeep(app: ExplorerApp, context: AppContext, acker: Acker,
                     syncer: knowledge_sync.KnowledgeSync | None) -> None:
    metrics, health = context.metrics, context.health
    interactions = context.topics["interactions"]

    saturated_reported = [0, 0]

    @app.timer(2.0)
    async def report_progress() -> None:
        lag = context.ingest.report_lag(app.consumer) if context.ingest else 0.0
        consumer = app.consumer
        if isinstance(consumer, BatchingConsumer):
            metrics.consumer_queued_records.set(consumer.queued_records)
            metrics.consumer_queued_requests.set(consumer.queued_requests)
            metrics.consumer_saturated_fetches.inc(consumer.saturated_fetches - saturated_reported[0])
            metrics.consumer_saturated_request_fetches.inc(consumer.saturated_request_fetches - saturated_reported[1])
            saturated_reported[:] = [consumer.saturated_fetches, consumer.saturated_request_fetches]
        health.observe(metrics.events_in._value.get() + metrics.requests_in._value.get(), lag)
        if context.states is not None:
            for outcome, value in context.states.stats().as_dict().items():
                metrics.transition_events.labels(outcome).set(value)
        metrics.worker_healthy.set(1 if health.status()[0] == "ok" else 0)

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        # Deliver what is in flight before the partitions move: a late changelog write landing after the next
        # owner's would overwrite newer values there (a bounded wait; a stuck producer is the health check's job).
        try:
            await asyncio.wait_for(acker.drain(), timeout=30.0)
            if context.recommender is not None:
                await asyncio.wait_for(context.recommender.drain(), timeout=30.0)
        except asyncio.TimeoutError:
            log.warning("in-flight deliveries did not finish within 30 s of a revocation")
        lost = [tp.partition for tp in revoked if tp.topic == interactions]
        if context.states is not None:
            context.states.release(lost)
        if syncer is not None:
            syncer.release(lost)

    for agent in app.agents.values():
        agent._on_error = _count_restart(metrics, health)  # Faust's hook: the actor crashed and will be restarted


def _count_restart(metrics: Metrics, health: Health) -> Any:
    async def on_error(agent: Any, exc: BaseException) -> None:
        name = getattr(agent, "name", str(agent))
        metrics.agent_restarts.labels(name).inc()
        health.agent_restarted(name)
        # An agent that raised may have left a batch unacked; commits never pass it (agents/batching.py), but a
        # restarted agent would go on past it: stop the worker instead, loudly.
        await health.fail(f"agent {name} crashed", exc)

    return on_error


def _register_web(app: faust.App, context: AppContext) -> None:
    @app.page("/metrics")
    async def metrics(web, request):  # type: ignore[no-untyped-def]
        # aiohttp wants the charset apart from the content type; UTF-8 is Prometheus's text default anyway.
        return web.bytes(context.metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web, request):  # type: ignore[no-untyped-def]
        assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
        status, reasons = context.health.status()
        body = {
            "status": status,
            "reasons": reasons,
            "app_id": app.conf.id,
            "uptime_s": round(time.time() - context.started_at, 3),
            "assigned_partitions": assigned,
            "events_in": context.metrics.events_in._value.get(),
            "events_valid": context.metrics.events_valid._value.get(),
            "clusters_version": context.clusters_version,
        }
        return web.json(body, status=200 if status != "failed" else 503)

"""The Faust app factory: one app, configured from one Settings object, with the agents from `agents/`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import faust

from streams import codec
from streams.kafka_config import faust_broker_credentials
from streams.metrics import Metrics
from streams.settings import Settings
from streams.topics import INTERACTIONS, INTERACTIONS_DLQ, RECOMMENDATION_REQUESTS, RECOMMENDATIONS, topic_name

log = logging.getLogger(__name__)


@dataclass
class Topics:
    interactions: faust.TopicT
    dlq: faust.TopicT
    requests: faust.TopicT
    recommendations: faust.TopicT


@dataclass
class AppContext:
    """What agents share: settings, topics, metrics. Attached to the app as `app.explorer`."""

    settings: Settings
    topics: Topics
    metrics: Metrics
    # Batch processors fed with every valid event by the ingest agent (transitions, trends, ...).
    processors: list = field(default_factory=list)
    clusters_version: str | None = None  # set when the transitions state is active
    started_at: float = field(default_factory=time.time)


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def consumer_group(settings: Settings, clusters_version: str | None) -> str:
    """The Faust app id, hence the consumer group and the state's changelog topics, of one clusters version.

    A new clusters version gets a new group that reads the retained `interactions` topic from its start into fresh
    state (a backfill), while workers of the old version keep serving with theirs.
    """
    return f"{settings.app_id}.{clusters_version}" if clusters_version else settings.app_id


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
    datadir = settings.resolved_data_dir() / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level itself
    app = faust.App(
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
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # Larger fetches and buffers let one agent batch hundreds of small events per wake-up.
        stream_buffer_maxsize=max(4096, settings.stream_batch_size * 4),
        broker_max_poll_records=max(500, settings.stream_batch_size),
        producer_linger=settings.producer_linger_s,
        producer_max_batch_size=1_048_576,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    topics = Topics(
        # Raw bytes in: validation must see (and dead-letter) exactly what the producer wrote.
        interactions=app.topic(topic_name(settings, INTERACTIONS), **raw),
        dlq=app.topic(topic_name(settings, INTERACTIONS_DLQ), **raw),
        requests=app.topic(topic_name(settings, RECOMMENDATION_REQUESTS), **raw),
        recommendations=app.topic(topic_name(settings, RECOMMENDATIONS), **raw),
    )
    context = AppContext(settings=settings, topics=topics, metrics=Metrics())
    app.explorer = context  # type: ignore[attr-defined]
    _register_web(app, context)
    if with_agents:
        from agents import register_all

        register_all(app, context, clusters)
    return app


def _register_web(app: faust.App, context: AppContext) -> None:
    @app.page("/metrics")
    async def metrics(web, request):  # type: ignore[no-untyped-def]
        # aiohttp wants the charset apart from the content type; UTF-8 is Prometheus's text default anyway.
        return web.bytes(context.metrics.exposition(), content_type="text/plain; version=0.0.4")

    @app.page("/health")
    async def health(web, request):  # type: ignore[no-untyped-def]
        assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
        status = {
            "status": "ok",
            "app_id": app.conf.id,
            "uptime_s": round(time.time() - context.started_at, 3),
            "assigned_partitions": assigned,
            "events_in": context.metrics.events_in._value.get(),
            "events_valid": context.metrics.events_valid._value.get(),
            "clusters_version": context.clusters_version,
        }
        return web.json(status)

"""The topic catalogue of the public contract, the names of the worker's own topics, consumer groups and tables,
and idempotent provisioning with the admin API."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from streams.settings import Settings

# Logical names from ../shared/contract.md; the deployed name adds EXPLORER_TOPIC_PREFIX.
INTERACTIONS = "interactions"
INTERACTIONS_DLQ = "interactions.dlq"
RECOMMENDATION_REQUESTS = "recommendation-requests"
RECOMMENDATIONS = "recommendations"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    logical_name: str
    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]


def topic_name(settings: Settings, logical_name: str) -> str:
    return f"{settings.topic_prefix}{logical_name}"


def catalogue(settings: Settings) -> list[TopicSpec]:
    """Every contract topic with the partition counts and configs this deployment wants."""
    rf = settings.replication_factor
    # Interactions are the replayable source of truth for backfills: keep them forever by default.
    keep_forever = {"retention.ms": "-1"}
    return [
        TopicSpec(INTERACTIONS, topic_name(settings, INTERACTIONS), settings.interactions_partitions, rf, keep_forever),
        TopicSpec(INTERACTIONS_DLQ, topic_name(settings, INTERACTIONS_DLQ), 1, rf, keep_forever),
        TopicSpec(
            RECOMMENDATION_REQUESTS,
            topic_name(settings, RECOMMENDATION_REQUESTS),
            settings.resolved_requests_partitions(),
            rf,
            {},
        ),
        TopicSpec(RECOMMENDATIONS, topic_name(settings, RECOMMENDATIONS), settings.resolved_requests_partitions(), rf, {}),
    ]


@dataclass(frozen=True, slots=True)
class ProvisionResult:
    created: list[str]
    existing: list[str]
    partition_mismatch: dict[str, tuple[int, int]]  # name -> (wanted, actual)


def consumer_group(settings: Settings, clusters_version: str | None) -> str:
    """The Faust app id, hence the consumer group and the state's changelog topics, of one clusters version.

    A new clusters version gets a new group that reads the retained `interactions` topic from its start into fresh
    state (a backfill), while workers of the old version keep serving with theirs.
    """
    return f"{settings.app_id}.{clusters_version}" if clusters_version else settings.app_id


STATE_FORMAT = "v2"  # the user/count/meta layout of models/partition_state.py; older changelogs are not read


def state_table_name(clusters_version: str) -> str:
    return f"state-{STATE_FORMAT}-{clusters_version}"


def changelog_topic_name(group: str, clusters_version: str) -> str:
    """Faust's name for the state table's changelog (group = the app id, `consumer_group`): where the durable
    state lives, read by `explorer knowledge export`."""
    return f"{group}-{state_table_name(clusters_version)}-changelog"


def repartition_topic_name(group: str, logical_name: str) -> str:
    """The internal topic that reroutes `logical_name` records to their user's partition, one per consumer group
    (as Kafka Streams names its repartition topics): a backfilling group never feeds the live group's."""
    return f"{group}-{logical_name}-repartition"


def internal_topics(settings: Settings, group: str) -> list[TopicSpec]:
    """The worker's own topics (beside Faust's changelogs): the repartition topics of its consumer group. Records
    wait there only until the owning worker read them: a week's retention is plenty."""
    partitions = settings.interactions_partitions
    week = {"retention.ms": str(7 * 86_400_000)}
    return [TopicSpec(name, repartition_topic_name(group, name), partitions, settings.replication_factor, week)
            for name in (INTERACTIONS, RECOMMENDATION_REQUESTS)]


def create_topics(settings: Settings, timeout_s: float = 30.0, specs: list[TopicSpec] | None = None
                  ) -> ProvisionResult:
    """Create every catalogue topic (or every one of `specs`) that does not exist yet; existing topics are left as
    they are."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.kafka_config import confluent_config

    admin = AdminClient(confluent_config(settings))
    specs = catalogue(settings) if specs is None else specs
    existing_topics = admin.list_topics(timeout=timeout_s).topics
    missing = [spec for spec in specs if spec.name not in existing_topics]
    created: list[str] = []
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.config)
             for s in missing],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result()
                created.append(name)
            except KafkaException as exc:
                # Another process may have created it between list and create: that is success for us.
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
    metadata = admin.list_topics(timeout=timeout_s).topics
    mismatch = {
        spec.name: (spec.partitions, len(metadata[spec.name].partitions))
        for spec in specs
        if spec.name in metadata and len(metadata[spec.name].partitions) != spec.partitions
    }
    return ProvisionResult(
        created=sorted(created),
        existing=sorted(s.name for s in specs if s.name in existing_topics),
        partition_mismatch=mismatch,
    )


def deployment_topics(settings: Settings, names: Iterable[str]) -> list[str]:
    """Of `names`, the topics one isolated deployment owns: its contract topics (`topic_prefix`) and its consumer
    groups' internal ones (`<app_id>.<clusters version>...`, `<app_id>-...`). Refused without a topic prefix: the
    contract topics of an unprefixed deployment are anyone's."""
    if not settings.topic_prefix:
        raise ValueError("deleting a deployment's topics needs its own topic prefix (EXPLORER_TOPIC_PREFIX)")
    owned = (settings.topic_prefix, f"{settings.app_id}.", f"{settings.app_id}-")
    return sorted(name for name in names if name.startswith(owned))


def delete_deployment_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Delete every topic of an isolated deployment (a test's, a bench's, an evaluation's) from the broker, so that
    they do not pile up there: a local broker with thousands of leftover partitions needs minutes to start."""
    from confluent_kafka.admin import AdminClient

    from streams.kafka_config import confluent_config

    admin = AdminClient(confluent_config(settings))
    names = deployment_topics(settings, admin.list_topics(timeout=timeout_s).topics)
    if not names:
        return names
    for future in admin.delete_topics(names, operation_timeout=timeout_s, request_timeout=timeout_s).values():
        future.result()
    # The controller has deleted them; a broker's metadata follows a moment later. Return once it no longer lists
    # them, so that a caller recreating a name (or counting topics) sees the deletion.
    deadline = time.monotonic() + timeout_s
    while set(names) & set(admin.list_topics(timeout=timeout_s).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the broker still lists deleted topics after {timeout_s:.0f} s")
        time.sleep(0.05)
    return names

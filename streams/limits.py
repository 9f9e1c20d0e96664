"""Size limits that must agree across settings, producer and topics, checked when a worker starts.

A dead letter embeds at most `dead_letter_max_raw_bytes` of a record (streams/dead_letters.py), so it is at most
`max_letter_bytes(...)`. That letter must fit the producer's requests (`producer_max_request_bytes`) and the DLQ
topic's `max.message.bytes`; a rerouted record (a valid one: at most `max_event_bytes`) must fit the producer and
its repartition topic. A mismatch is a clear error at start-up, not a dead letter that can never be delivered.
"""

from __future__ import annotations

import logging

from streams.dead_letters import max_letter_bytes
from streams.settings import Settings

log = logging.getLogger(__name__)

HEADER_ALLOWANCE = 1_024  # the origin header and record framing of a rerouted record


class LimitsError(RuntimeError):
    """Settings, producer and topic limits disagree; the message says which and how to fix it."""


def topic_limits(settings: Settings, topics: list[str], timeout_s: float = 15.0) -> dict[str, int]:
    """max.message.bytes of each topic (its own setting or the broker's default), via the admin API. A topic whose
    configs this principal may not describe (no DescribeConfigs ACL) is left out, with a warning: the settings-level
    checks still run, and the operator is told which grant turns the topic-level one on."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    from streams.kafka_config import confluent_config

    admin = AdminClient(confluent_config(settings))
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
    limits: dict[str, int] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        try:
            entry = future.result(timeout=timeout_s).get("max.message.bytes")
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise
            log.warning("cannot read max.message.bytes of topic %s (no DescribeConfigs ACL for this principal): its "
                        "size limit is not checked at start-up", resource.name)
            continue
        if entry is not None and entry.value is not None:
            limits[resource.name] = int(entry.value)
    return limits


def problems(settings: Settings, dlq_limit: int | None, reroutes: list[tuple[str, int, str, int]]) -> list[str]:
    """What disagrees (pure: the topic limits are given). `reroutes`: (source topic, its max.message.bytes,
    repartition topic, its max.message.bytes)."""
    found = []
    letter = max_letter_bytes(settings.dead_letter_max_raw_bytes)
    request = settings.producer_max_request_bytes
    if letter > request:
        found.append(f"a dead letter can be {letter} bytes (EXPLORER_DEAD_LETTER_MAX_RAW_BYTES="
                     f"{settings.dead_letter_max_raw_bytes}) but the producer's requests are capped at {request} "
                     "(EXPLORER_PRODUCER_MAX_REQUEST_BYTES): lower the first or raise the second")
    if dlq_limit is not None and letter > dlq_limit:
        found.append(f"a dead letter can be {letter} bytes but the DLQ topic accepts at most {dlq_limit} "
                     "(max.message.bytes): lower EXPLORER_DEAD_LETTER_MAX_RAW_BYTES or raise the topic's limit")
    # Only valid records are rerouted, and a valid record is at most max_event_bytes (larger ones are dead-lettered
    # with a capped copy): that, not the source topic's own limit, is what a repartition topic must accept.
    largest = settings.max_event_bytes + HEADER_ALLOWANCE
    for source, _source_limit, repartition, repartition_limit in reroutes:
        if largest > repartition_limit:
            found.append(f"valid {source} records can be {settings.max_event_bytes} bytes (EXPLORER_MAX_EVENT_BYTES) "
                         f"but the repartition topic {repartition} accepts only {repartition_limit}: raise its "
                         "max.message.bytes or lower EXPLORER_MAX_EVENT_BYTES")
    if largest > request:
        found.append(f"valid records can be {settings.max_event_bytes} bytes (EXPLORER_MAX_EVENT_BYTES), more than "
                     f"the producer can forward ({request}, EXPLORER_PRODUCER_MAX_REQUEST_BYTES)")
    return found


def check_limits(settings: Settings, dlq: str, reroutes: list[tuple[str, str]]) -> None:
    """Raise LimitsError when the dead letters or rerouted records could not be delivered. `reroutes`: (source
    topic, its repartition topic)."""
    limits = topic_limits(settings, [dlq, *(t for pair in reroutes for t in pair)])
    pairs = [(s, limits[s], r, limits[r]) for s, r in reroutes if s in limits and r in limits]
    found = problems(settings, limits.get(dlq), pairs)
    if found:
        raise LimitsError("size limits disagree:\n  - " + "\n  - ".join(found))

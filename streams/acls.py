"""Who needs which permission: the ACLs of each role on a secured cluster, and each command's start-up check.

Two views of the same needs. `role_grants` lists the ACLs an operator grants a principal, with prefixed patterns
where names are only known at run time (the Faust app's consumer group `<app id>.<clusters version>` and its
changelog topics `<group>-<table>-changelog`, `<group>-__assignor-__leader`). The `*_access` functions name the
concrete topics and groups one command will touch now, for streams.kafka_check. A test grants `role_grants` and
checks the matching access passes, so the README's list and the checks cannot drift apart.

Topic provisioning (`explorer topics create`) and ACL changes are left to a super user / admin principal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from streams.kafka_check import CREATE, READ, WRITE, Access

DESCRIBE_CONFIGS = "DESCRIBE_CONFIGS"  # read-only: lets the worker check topic size limits at start-up
_KAFKA_ACLS_OPERATION = {READ: "Read", WRITE: "Write", CREATE: "Create", DESCRIBE_CONFIGS: "DescribeConfigs"}
from streams.settings import Settings
from streams.topics import (
    INTERACTIONS,
    INTERACTIONS_DLQ,
    RECOMMENDATION_REQUESTS,
    RECOMMENDATIONS,
    catalogue,
    internal_topics,
    topic_name,
)

Role = Literal["worker", "producer", "recommend-client", "reader"]
ROLES: tuple[Role, ...] = ("worker", "producer", "recommend-client", "reader")
ROLE_HELP = {
    "worker": "`explorer worker` and `explorer backfill` (a backfill runs a worker)",
    "producer": "`explorer replay`, `explorer loadgen` (and any upstream service writing interactions)",
    "recommend-client": "`explorer recommend` (and any downstream service asking for recommendations)",
    "reader": "`explorer knowledge export` (reads the state changelogs)",
}


@dataclass(frozen=True, order=True)
class Grant:
    resource: Literal["topic", "group"]
    name: str
    operation: str  # READ, WRITE, CREATE (each implies DESCRIBE), DESCRIBE_CONFIGS
    prefixed: bool = False


def repartition_topics(settings: Settings, group: str) -> list[str]:
    """The worker's internal re-keying topics (streams/topics.py `internal_topics`), which it creates, writes and
    reads. Their names start with the group, hence with the app id: the prefixed grants below cover them."""
    return [spec.name for spec in internal_topics(settings, group)]


def role_grants(settings: Settings, role: Role) -> list[Grant]:
    name = lambda logical: topic_name(settings, logical)  # noqa: E731
    if role == "worker":
        grants = [Grant("topic", name(INTERACTIONS), READ), Grant("topic", name(RECOMMENDATION_REQUESTS), READ),
                  Grant("topic", name(RECOMMENDATIONS), WRITE), Grant("topic", name(INTERACTIONS_DLQ), WRITE)]
        # the app id is the prefix of its consumer group(s), of every topic Faust creates for its tables and of
        # the worker's repartition topics
        grants += [Grant("topic", settings.app_id, op, prefixed=True) for op in (CREATE, READ, WRITE)]
        # the start-up size check (streams/limits.py) reads max.message.bytes of the topics it forwards records to
        grants += [Grant("topic", topic, DESCRIBE_CONFIGS) for topic in
                   (name(INTERACTIONS), name(RECOMMENDATION_REQUESTS), name(INTERACTIONS_DLQ))]
        grants.append(Grant("topic", settings.app_id, DESCRIBE_CONFIGS, prefixed=True))
        grants.append(Grant("group", settings.app_id, READ, prefixed=True))
        return grants
    if role == "producer":
        return [Grant("topic", name(INTERACTIONS), WRITE)]
    if role == "recommend-client":
        return [Grant("topic", name(RECOMMENDATION_REQUESTS), WRITE), Grant("topic", name(RECOMMENDATIONS), READ)]
    if role == "reader":
        return [Grant("topic", settings.app_id, READ, prefixed=True)]
    raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")


# --- what each command checks at start-up ----------------------------------------------------------------------


def worker_access(settings: Settings, group: str, state_topics: Iterable[str]) -> Access:
    """A Faust worker of consumer group `group` whose tables' changelogs (and leader topic) are `state_topics`."""
    read = [topic_name(settings, INTERACTIONS)]
    write: list[str] = []
    if settings.recommendations_enabled:
        read.append(topic_name(settings, RECOMMENDATION_REQUESTS))
        write.append(topic_name(settings, RECOMMENDATIONS))
    if settings.dead_letters:
        write.append(topic_name(settings, INTERACTIONS_DLQ))
    internal = [*repartition_topics(settings, group), *state_topics]
    return Access.of(read=[*read, *internal], write=[*write, *internal], groups=[group], may_create=internal)


def faust_state_topics(faust_app) -> list[str]:  # noqa: ANN001 -- a faust.App
    """The topics a Faust app creates for itself: its tables' changelogs and the leader assignor's topic."""
    topics = [table.changelog_topic_name for table in faust_app.tables.values()]
    if not faust_app.conf.topic_disable_leader:
        topics.append(f"{faust_app.conf.id}-__assignor-__leader")
    return sorted(topics)


def producer_access(settings: Settings) -> Access:
    return Access.of(write=[topic_name(settings, INTERACTIONS)])


def recommend_access(settings: Settings) -> Access:
    return Access.of(write=[topic_name(settings, RECOMMENDATION_REQUESTS)], read=[topic_name(settings, RECOMMENDATIONS)])


def reader_access(changelog_topic: str) -> Access:
    # an absent changelog (no worker counted with that version yet) is the state reader's error, said better
    return Access.of(read=[changelog_topic], optional=[changelog_topic])


def backfill_access(settings: Settings, group: str) -> Access:
    """The backfill positions `group` on `interactions` itself before its worker (which checks the rest) starts."""
    return Access.of(read=[topic_name(settings, INTERACTIONS)], groups=[group])


def provisioning_access(settings: Settings) -> Access:
    return Access(may_create=frozenset(spec.name for spec in catalogue(settings)))


# --- granting ------------------------------------------------------------------------------------------------


def kafka_acls_commands(grants: Iterable[Grant], principal: str, bootstrap: str) -> list[str]:
    """The same grants as `kafka-acls.sh` command lines, for operators who provision with Kafka's tools."""
    lines = []
    for grant in sorted(grants):
        pattern = " --resource-pattern-type prefixed" if grant.prefixed else ""
        lines.append(f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config admin.properties --add "
                     f"--allow-principal {principal} --operation {_KAFKA_ACLS_OPERATION[grant.operation]} "
                     f"--{grant.resource} {grant.name}{pattern}")
    return lines


def apply_grants(settings: Settings, principal: str, grants: Iterable[Grant], timeout_s: float = 30.0) -> int:
    """Create the ACLs (as the principal of `settings`, which needs ALTER on the cluster); returns how many."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    from streams.kafka_config import confluent_config

    bindings = [AclBinding(ResourceType[grant.resource.upper()], grant.name,
                           ResourcePatternType.PREFIXED if grant.prefixed else ResourcePatternType.LITERAL,
                           principal, "*", AclOperation[grant.operation], AclPermissionType.ALLOW)
                for grant in grants]
    admin = AdminClient(confluent_config(settings))
    for future in admin.create_acls(bindings, request_timeout=timeout_s).values():
        future.result()
    return len(bindings)

"""`explorer topics create` against the real broker: creates the catalogue once, then leaves it alone."""

import os
import subprocess
import sys

import pytest

from streams.kafka_config import confluent_config
from streams.settings import Settings
from streams.topics import catalogue
from tests.harness import settings_env

pytestmark = pytest.mark.integration


def run_cli(settings, *args):
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_topics_create_is_idempotent_and_honours_partitions(kafka_settings, topics_deleted_after):
    import uuid

    from confluent_kafka.admin import AdminClient

    settings = kafka_settings.model_copy(update={"topic_prefix": f"cli-{uuid.uuid4().hex[:8]}."})
    topics_deleted_after.append(settings)
    first = run_cli(settings, "topics", "create", "--partitions", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == 4

    second = run_cli(settings, "topics", "create", "--partitions", "5")
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and second.stdout.count("exists") == 4
    assert "has 3 partitions, settings ask for 5" in second.stderr  # told, not silently changed

    topics = AdminClient(confluent_config(settings)).list_topics(timeout=10).topics
    specs = {spec.logical_name: spec.name for spec in catalogue(settings)}
    assert len(topics[specs["interactions"]].partitions) == 3
    assert len(topics[specs["interactions.dlq"]].partitions) == 1


def test_deleting_a_deployments_topics_leaves_every_other_deployments(kafka_settings):
    import time
    import uuid

    from confluent_kafka.admin import AdminClient

    from streams.topics import TopicSpec, changelog_topic_name, consumer_group, create_topics, \
        delete_deployment_topics, internal_topics

    tag = uuid.uuid4().hex[:8]
    ours, theirs = (kafka_settings.model_copy(update={"topic_prefix": f"del-{tag}{suffix}.",
                                                     "app_id": f"explorer-del-{tag}{suffix}"})
                    for suffix in ("", "x"))  # "theirs" starts with our app id: only the separator tells them apart
    for settings in (ours, theirs):
        group = consumer_group(settings, "c40-test")
        changelog = TopicSpec("changelog", changelog_topic_name(group, "c40-test"), 1, 1, {})
        create_topics(settings, specs=[*catalogue(settings), *internal_topics(settings, group), changelog])
    admin = AdminClient(confluent_config(kafka_settings))

    def listed(settings: Settings) -> set[str]:
        return {t for t in admin.list_topics(timeout=10).topics if t.startswith((settings.topic_prefix,
                                                                                  settings.app_id))}

    deadline = time.monotonic() + 30  # a new topic reaches the broker's metadata a moment after its creation
    while len(listed(ours)) < 7 or len(listed(theirs)) < 7:
        assert time.monotonic() < deadline, "created topics never listed"
        time.sleep(0.05)
    theirs_before = listed(theirs)
    try:
        deleted = delete_deployment_topics(ours)
        assert len(deleted) == 7  # 4 contract topics, 2 repartition topics, 1 changelog
        assert all(name.startswith((ours.topic_prefix, f"{ours.app_id}.")) for name in deleted)
        left = set(admin.list_topics(timeout=10).topics)
        assert theirs_before <= left
        assert not left & set(deleted)
    finally:
        delete_deployment_topics(theirs)

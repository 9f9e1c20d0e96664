"""`explorer topics create` against the real broker: creates the catalogue once, then leaves it alone."""

import os
import subprocess
import sys

import pytest

from streams.kafka_config import confluent_config
from streams.topics import catalogue
from tests.harness import settings_env

pytestmark = pytest.mark.integration


def run_cli(settings, *args):
    env = {**os.environ, **settings_env(settings)}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_topics_create_is_idempotent_and_honours_partitions(kafka_settings):
    import uuid

    from confluent_kafka.admin import AdminClient

    settings = kafka_settings.model_copy(update={"topic_prefix": f"cli-{uuid.uuid4().hex[:8]}."})
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

"""`explorer replay movielens` against the real broker: what goes in comes back, keyed and ordered per user."""

import os
import subprocess
import sys
from collections import defaultdict

import orjson
import pytest

from streams.movielens import load_ratings
from streams.topics import INTERACTIONS, topic_name
from tests.harness import consume_all, settings_env

pytestmark = pytest.mark.integration


def test_replay_5000_movielens_events_and_consume_them_back(isolated_settings, movielens_dir):
    settings = isolated_settings.model_copy(update={"movielens_dir": movielens_dir})
    env = {**os.environ, **settings_env(settings)}
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", "movielens", "--limit", "5000"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "published 5000 events" in result.stdout

    messages = consume_all(settings, topic_name(settings, INTERACTIONS), expected=5000)
    assert len(messages) == 5000

    expected = {r.event_id: r for r in load_ratings(movielens_dir)[:5000]}
    seen_partitions: dict[str, set[int]] = defaultdict(set)
    per_partition: dict[int, list[tuple[float, str]]] = defaultdict(list)
    for message in messages:
        value = orjson.loads(message.value())
        rating = expected.pop(value["event_id"])  # KeyError: an event we never sent, or one delivered twice
        assert message.key().decode() == rating.user_id == value["user_id"]
        assert value == {"event_id": rating.event_id, "user_id": rating.user_id, "item_id": rating.item_id,
                         "ts": rating.ts, "event_type": "rating", "value": rating.rating}
        seen_partitions[rating.user_id].add(message.partition())
        per_partition[message.partition()].append((value["ts"], value["event_id"]))
    assert not expected, f"{len(expected)} events never arrived"
    # Keyed by user: each user's events live on one partition, in event-time order.
    assert all(len(partitions) == 1 for partitions in seen_partitions.values())
    for entries in per_partition.values():
        assert entries == sorted(entries)


def test_replay_partitions_keys_like_the_java_client(isolated_settings):
    """Per-user state needs every producer (Java upstreams, Faust/aiokafka, our replay) to agree on the partition."""
    from aiokafka.partitioner import murmur2

    from streams.records import InteractionEvent
    from streams.replay import publish_events

    settings = isolated_settings
    users = [str(u) for u in range(1, 60)]
    events = [InteractionEvent(f"p-{u}", u, "1", 881250949.0, "rating", 4.0) for u in users]
    publish_events(settings, events)
    messages = consume_all(settings, topic_name(settings, INTERACTIONS), expected=len(users))
    partitions = settings.interactions_partitions
    for message in messages:
        expected_partition = (murmur2(message.key()) & 0x7FFFFFFF) % partitions
        assert message.partition() == expected_partition

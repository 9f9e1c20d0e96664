"""Any Kafka client with its defaults works (issue 16): upstream producers and downstream clients using librdkafka's
`consistent_random` (its default: CRC32), `murmur2_random` (the Java client's hash, native here) and `random`, all
mixed in one run. Mis-partitioned records are rerouted to their user's partition through the group's repartition
topics: every user's answer carries its history, the counts equal a reference computed from what was produced,
nothing is dead-lettered for its partition, and the misrouted traffic is counted per topic."""

from __future__ import annotations

import threading
import zlib

import pytest

from models.clusters import load_serving
from models.reference import reference_counts
from streams.app import consumer_group
from streams.movielens import load_ratings
from streams.recommend_client import RecommendationClient
from streams.replay import publish_events
from streams.state_reader import read_state_counts
from streams.topics import (
    INTERACTIONS,
    INTERACTIONS_DLQ,
    RECOMMENDATION_REQUESTS,
    repartition_topic_name,
    topic_name,
)
from tests.harness import group_caught_up, run_worker, topic_size, wait_until, while_alive
from tests.integration.test_recommender import check_answers, expected_histories

pytestmark = pytest.mark.integration

PARTITIONERS = ("consistent_random", "murmur2_random", "random")
SLICE = 8_000  # MovieLens ratings, in event-time order


def partitioner_of(user_id: str) -> str:
    """Each user's upstream service uses one client library (a stable choice per user, spread over all three)."""
    return PARTITIONERS[zlib.crc32(user_id.encode()) % len(PARTITIONERS)]


def test_producers_and_clients_with_any_librdkafka_partitioner_are_served_warm(serving_settings, tmp_path):
    # The three producers run concurrently: a `random` producer scatters a user's events over partitions, so they
    # reach the user's partition in another order than produced. The state orders a user's engagements by event time
    # within the allowed lateness; a compressed replay spans months of event time per second of wall time, hence the
    # generous lateness, so that none of the reordering counts as late here (tests/unit/test_transitions.py covers
    # late events).
    settings = serving_settings.model_copy(update={"allowed_lateness_s": 30 * 86_400.0})
    ratings = load_ratings(settings.movielens_dir)[:SLICE]
    by_partitioner = {name: [r for r in ratings if partitioner_of(r.user_id) == name] for name in PARTITIONERS}
    assert all(len(rows) > 1_000 for rows in by_partitioner.values())
    group = consumer_group(settings, load_serving(settings).version)
    topics = [topic_name(settings, INTERACTIONS), repartition_topic_name(group, INTERACTIONS)]

    with run_worker(settings, tmp_path) as worker:
        failures: list[BaseException] = []

        def publish(name: str) -> None:
            try:
                stats = publish_events(settings, (r.to_event() for r in by_partitioner[name]), partitioner=name)
                assert stats.failed == 0, stats
            except BaseException as exc:  # noqa: BLE001 -- re-raised below
                failures.append(exc)

        threads = [threading.Thread(target=publish, args=(name,)) for name in PARTITIONERS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not failures, failures
        wait_until(while_alive(worker, lambda: all(group_caught_up(settings, group, t) for t in topics)), 600,
                   "the worker to commit the interactions and their reroutes", poll_s=0.5)

        histories = expected_histories(ratings, load_serving(settings), settings)
        users = sorted((u for u, history in histories.items() if history), key=int)  # users with a history to show
        answers = {}
        for name in PARTITIONERS:  # downstream clients with each partitioner too
            asked = [u for u in users if zlib.crc32(u.encode()) % 7 == PARTITIONERS.index(name)][:25]
            with RecommendationClient(settings, partitioner=name) as client:
                ids = {user: client.send(user) for user in asked}
                got = client.wait(ids.values(), timeout_s=300)
            answers.update({user: got[rid] for user, rid in ids.items()})
        misrouted = {topic: worker.metric(f"explorer_events_misrouted_total{{topic={topic}}}")
                     for topic in (topic_name(settings, INTERACTIONS), topic_name(settings, RECOMMENDATION_REQUESTS))}
        assert worker.alive(), worker.log_tail()

    # every answer is warm: its history is the user's real one (check_answers compares it with the reference)
    sources = check_answers(answers, ratings, settings)
    with_history = sum(bool(a.recommendation["history_clusters"]) for a in answers.values())
    print(f"\n{len(answers)} answers to clients of 3 partitioners: {sources}; with history {with_history}; "
          f"misrouted records counted: {misrouted}")
    assert with_history == len(answers)
    # roughly 3 of 4 records of a non-murmur2 producer land elsewhere (4 partitions): they were rerouted, and counted
    assert all(count > 0 for count in misrouted.values()), misrouted
    assert misrouted[topic_name(settings, INTERACTIONS)] >= 0.5 * (len(ratings) - len(by_partitioner["murmur2_random"]))
    assert topic_size(settings, topic_name(settings, INTERACTIONS_DLQ)) == 0  # nothing dead-lettered, no wrong_partition

    clusters = load_serving(settings)
    expected = reference_counts(ratings, clusters.cluster_of, settings)
    actual = read_state_counts(settings, clusters.version)
    assert actual.total and actual.total == expected.total
    assert actual.daily == expected.daily and actual.trends == expected.trends

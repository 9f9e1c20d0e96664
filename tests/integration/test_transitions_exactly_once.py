"""Transitions counted by real workers against the real broker equal a straightforward reference computation —
after a clean replay, and after SIGKILLs at random points during a replay that is itself sent twice."""

import os
import random
import signal

import pytest

from models.clusters import load_serving
from models.knowledge import KnowledgeStore
from models.reference import reference_counts
from streams.app import consumer_group
from streams.movielens import load_ratings
from streams.replay import publish_events
from streams.state_reader import read_state_counts
from streams.topics import INTERACTIONS, topic_name
from tests.harness import group_caught_up, run_worker, wait_until, while_alive

pytestmark = pytest.mark.integration


@pytest.fixture
def counting_settings(isolated_settings, clusters_data_dir, movielens_dir):
    return isolated_settings.model_copy(update={"data_dir": clusters_data_dir, "movielens_dir": movielens_dir})


def caught_up(settings) -> bool:
    group = consumer_group(settings, load_serving(settings).version)
    return group_caught_up(settings, group, topic_name(settings, INTERACTIONS))


def assert_counts_match_reference(settings, ratings):
    clusters = load_serving(settings)
    expected = reference_counts(ratings, clusters.cluster_of, settings)
    actual = read_state_counts(settings, clusters.version)
    assert actual.total, "no transitions were counted"
    assert actual.total == expected.total
    assert actual.daily == expected.daily
    assert actual.trends == expected.trends


def test_full_movielens_replay_matches_the_reference(counting_settings, movielens_dir, tmp_path):
    # A bound one full fetch reaches: the consumer stops and resumes fetching interactions all through the replay.
    settings = counting_settings.model_copy(update={"consumer_max_queued_records": 2_000})
    ratings = load_ratings(movielens_dir)
    clusters = load_serving(settings)
    expected = reference_counts(ratings, clusters.cluster_of, settings)
    busiest = sorted(expected.total, key=lambda pair: -sum(expected.total[pair].values()))[:25]
    knowledge = KnowledgeStore.from_settings(settings, clusters.version, refresh_s=0.0)

    def retrieval_matches() -> bool:
        return all(dict(knowledge.top_next(c1, c2, n=100)) == expected.total[(c1, c2)] for c1, c2 in busiest)

    with run_worker(settings, tmp_path) as worker:
        publish_events(settings, (r.to_event() for r in ratings))
        wait_until(while_alive(worker, lambda: caught_up(settings)), 600, "the worker to commit the whole replay",
                   poll_s=1.0)
        assert worker.alive(), worker.log_tail()
        # The replay outran the agent: the consumer held the backlog at the broker (a fetch or two queued in the
        # worker at most, then nothing fetched until the agent acked) and still nothing was lost (the counts below).
        wait_until(lambda: worker.metric("explorer_consumer_saturated_fetches_total") > 0, 10,
                   "the worker to report fetches that left interactions out (a full queue)", poll_s=0.5)
        # Full collections froze their survivors (streams/gc_freeze.SurvivorFreezer) all through the replay.
        wait_until(lambda: worker.metric("explorer_gc_survivor_freezes_total") > 0, 10,
                   "the worker to report objects frozen by full collections", poll_s=0.5)
        # The knowledge sync runs on its own cadence: retrieval (RAG) converges to the exact counts.
        wait_until(retrieval_matches, 60, "LanceDB retrieval to match the reference counts", poll_s=0.5)
        assert worker.alive(), worker.log_tail()
    assert_counts_match_reference(settings, ratings)


def test_sigkill_during_a_double_replay_still_counts_each_event_once(counting_settings, movielens_dir, tmp_path):
    settings = counting_settings
    ratings = load_ratings(movielens_dir)
    publish_events(settings, (r.to_event() for r in ratings))
    publish_events(settings, (r.to_event() for r in ratings))  # the whole replay sent twice
    total = 2 * len(ratings)

    rng = random.Random(2405)
    kills = 0
    while kills < 3:
        # Kill at a random point of what is left: the worker has consumed something but not everything.
        target = rng.randint(2_000, 25_000)
        with run_worker(settings, tmp_path) as worker:
            wait_until(lambda: worker.metric("explorer_events_in_total") >= target or caught_up(settings), 600,
                       f"{target} events consumed before the kill", poll_s=0.1)
            if caught_up(settings):
                break
            os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait(30)
            kills += 1
    assert kills >= 2, "the replay finished before the worker could be killed twice"

    with run_worker(settings, tmp_path) as worker:
        wait_until(lambda: caught_up(settings), 900, f"the worker to commit all {total} events", poll_s=1.0)
        assert worker.alive(), worker.log_tail()
    assert_counts_match_reference(settings, ratings)

"""The recommender agent against the real broker: every answer's novel cluster is a real cluster outside the user's
history, every item belongs to it and is new to the user; duplicates get the same answer; bad requests are
dead-lettered with a reason while the worker keeps serving."""

from __future__ import annotations

import orjson
import pytest

from models.clusters import load_serving
from models.recommend import FALLBACK, SOURCES
from streams.movielens import load_ratings
from streams.recommend_client import RecommendationClient
from streams.replay import publish_events
from streams.topics import INTERACTIONS, INTERACTIONS_DLQ, RECOMMENDATION_REQUESTS, topic_name
from tests.harness import consume_all, group_caught_up, run_worker, wait_until

pytestmark = pytest.mark.integration


def expected_histories(ratings, clusters, settings) -> dict[str, list[str]]:
    """Per user: the last two entries of the collapsed cluster sequence of positive engagements (the contract)."""
    histories: dict[str, list[str]] = {}
    for rating in sorted(ratings, key=lambda r: (r.ts, r.to_event().event_id)):
        cluster = clusters.cluster_of(rating.item_id)
        if not settings.is_positive("rating", rating.rating) or cluster is None:
            continue
        tail = histories.setdefault(rating.user_id, [])
        if not tail or tail[-1] != cluster:
            histories[rating.user_id] = [*tail, cluster][-2:]
    return histories


def replay_and_wait(settings, ratings) -> None:
    from streams.app import consumer_group

    publish_events(settings, (r.to_event() for r in ratings))
    group = consumer_group(settings, load_serving(settings).version)
    wait_until(lambda: group_caught_up(settings, group, topic_name(settings, INTERACTIONS)), 900,
               "the worker to commit the replay", poll_s=0.5)


def check_answers(answers, ratings, settings) -> dict[str, int]:
    clusters = load_serving(settings)
    members = clusters.members()
    histories = expected_histories(ratings, clusters, settings)
    had: dict[str, set[str]] = {}
    for rating in ratings:
        had.setdefault(rating.user_id, set()).add(rating.item_id)
    sources = {source: 0 for source in SOURCES}
    for user_id, answer in answers.items():
        rec = answer.recommendation
        history = histories.get(user_id, [])
        assert rec["user_id"] == user_id
        assert rec["history_clusters"] == history, user_id
        novel = rec["novel_cluster"]["id"]
        assert novel in clusters.clusters and novel not in history
        assert rec["novel_cluster"]["name"] == clusters.clusters[novel].name
        assert 0 < len(rec["items"]) <= 10, rec
        for item in rec["items"]:
            assert item["item_id"] in members[novel]
            assert item["item_id"] not in had[user_id]
        assert rec["source"] in SOURCES
        if len(history) < 2:
            assert rec["source"] == FALLBACK
        sources[rec["source"]] += 1
    return sources


def ask_everyone(settings, users, timeout_s: float) -> dict:
    """One request per user, all sent at once; the answers by user."""
    with RecommendationClient(settings) as client:
        ids = {user: client.send(user) for user in users}
        answers = client.wait(ids.values(), timeout_s=timeout_s)
    return {user: answers[rid] for user, rid in ids.items()}


def test_every_user_gets_a_novel_cluster_grounded_in_its_items(serving_settings, tmp_path):
    # every request may wait for the LLM here (72 at once): this test is about the LLM path really serving
    settings = serving_settings.model_copy(update={"llm_max_queue_wait_s": 3_600.0})
    ratings = load_ratings(settings.movielens_dir)[:6_000]  # 72 users (all 943: the slow test below)
    users = sorted({r.user_id for r in ratings}, key=int)
    with run_worker(settings, tmp_path) as worker:
        replay_and_wait(settings, ratings)
        with RecommendationClient(settings) as client:
            ids = {user: client.send(user) for user in users}
            answers = client.wait(ids.values(), timeout_s=600)
            by_user = {user: answers[rid] for user, rid in ids.items()}
            sources = check_answers(by_user, ratings, settings)
            assert sources["table"] + sources["llm"] > len(users) / 2, sources  # the LLM path really serves

            # A duplicated request (same request_id) gets the very same answer, even after more events arrived.
            again = users[:5]
            publish_events(settings, (r.to_event() for r in load_ratings(settings.movielens_dir)[6_000:6_500]))
            for user in again:
                client.answers.pop(ids[user])
                client.send(user, request_id=ids[user])
            repeated = client.wait([ids[u] for u in again], timeout_s=120)
            for user in again:
                assert repeated[ids[user]].recommendation == by_user[user].recommendation
        assert worker.metric("explorer_duplicate_requests_total") == len(again)
        assert worker.alive(), worker.log_tail()


def test_a_backlog_skips_the_llm_instead_of_expiring(serving_settings, tmp_path):
    """Requests queued longer than llm_max_queue_wait_s are answered without the LLM (table or fallback), each
    counted; none is lost or expired. The bound is tiny here, so every miss counts as a backlog."""
    settings = serving_settings.model_copy(update={"llm_max_queue_wait_s": 1e-3, "pair_refresh_enabled": False})
    ratings = load_ratings(settings.movielens_dir)[:3_000]
    users = sorted({r.user_id for r in ratings}, key=int)
    with run_worker(settings, tmp_path) as worker:
        replay_and_wait(settings, ratings)
        by_user = ask_everyone(settings, users, timeout_s=300)
        sources = check_answers(by_user, ratings, settings)
        assert sources["llm"] == 0 and sources["table"] == 0, sources  # no table rows without the refresher
        with_pairs = sum(len(a.recommendation["history_clusters"]) == 2 for a in by_user.values())
        assert with_pairs > 0
        assert worker.metric("explorer_llm_failures_total{reason=backlog}") == with_pairs
        assert worker.metric("explorer_requests_rejected_total{reason=expired}") == 0
        assert worker.alive(), worker.log_tail()


def test_bad_requests_are_dead_lettered_and_serving_goes_on(serving_settings, tmp_path):
    from confluent_kafka import Producer

    from streams.kafka_config import confluent_config

    settings = serving_settings
    ratings = load_ratings(settings.movielens_dir)[:2_000]
    bad = [(b"1", b"{not json"), (b"1", orjson.dumps({"request_id": "r", "user_id": "2", "ts": 1.0})),
           (b"1", orjson.dumps({"request_id": "r", "user_id": "1", "k": 0})), (b"1", b"[]"),
           (b"1", orjson.dumps({"user_id": "1"}))]
    with run_worker(settings, tmp_path) as worker:
        replay_and_wait(settings, ratings)
        producer = Producer(confluent_config(settings, **{"partitioner": "murmur2_random"}))
        for key, value in bad:
            producer.produce(topic_name(settings, RECOMMENDATION_REQUESTS), key=key, value=value)
        producer.flush(10)
        with RecommendationClient(settings) as client:
            answer = client.recommend(ratings[0].user_id, timeout_s=120)
        assert answer.recommendation["user_id"] == ratings[0].user_id
        letters = consume_all(settings, topic_name(settings, INTERACTIONS_DLQ), expected=len(bad))
        reasons = sorted(orjson.loads(m.value())["error"].split(":")[0] for m in letters)
        assert reasons == sorted(["malformed_json", "key_mismatch", "bad_value", "not_an_object", "missing_field"])
        assert all(orjson.loads(m.value())["topic"] == topic_name(settings, RECOMMENDATION_REQUESTS) for m in letters)
        assert worker.alive(), worker.log_tail()


@pytest.mark.slow
@pytest.mark.timeout(4800)  # the replay (~2 min) and the bulk pair table (~10 min on 2 cores), beyond 600 s
def test_all_943_users_after_the_full_replay_and_a_bulk_pair_table(serving_settings, tmp_path):
    """The acceptance run over every MovieLens user, served as designed: full replay, then `explorer pairs build`'s
    bulk build (all processes) while the worker runs, then one request per user. The worker picks the rows up from
    LanceDB (it re-infers nothing itself here), so every user with two clusters is a table hit."""
    from models.finetune.registry import current_model_path
    from models.knowledge import KnowledgeStore
    from models.pair_bulk import build, default_processes
    from models.pair_table import PairTable, all_pairs

    settings = serving_settings.model_copy(update={"pair_refresh_enabled": False})
    clusters = load_serving(settings)
    ratings = load_ratings(settings.movielens_dir)
    users = sorted({r.user_id for r in ratings}, key=int)
    assert len(users) == 943
    with run_worker(settings, tmp_path) as worker:
        replay_and_wait(settings, ratings)
        store = KnowledgeStore.from_settings(settings, clusters.version)
        table = PairTable.from_settings(settings, clusters.version)
        processes = default_processes(1)
        report = build(None, store, table, clusters, processes=processes, settings=settings,
                       model_path=str(current_model_path(settings)), scored=settings.scored_pairs)
        everything = len(all_pairs(clusters))
        print(f"\nbulk pair table: {report.pairs} pairs ({report.with_knowledge} with knowledge) in "
              f"{report.seconds:.0f}s with {processes} processes = {report.pairs_per_s:.2f} pairs/s")
        assert report.pairs == everything and table.count() == everything
        wait_until(lambda: worker.metric("explorer_pair_table_rows") == everything, 60,
                   "the worker to merge the bulk-built rows")
        by_user = ask_everyone(settings, users, timeout_s=600)
        sources = check_answers(by_user, ratings, settings)
        with_pairs = sum(len(a.recommendation["history_clusters"]) == 2 for a in by_user.values())
        print(f"sources over all users: {sources}")
        assert sources["table"] == with_pairs and sources["llm"] == 0, sources
        assert worker.metric("explorer_requests_rejected_total{reason=expired}") == 0
        assert worker.alive(), worker.log_tail()

"""The pair table follows the streaming knowledge: when a pair's top next clusters change, the worker re-infers
that pair's row in the background within seconds (agents/pair_refresh.py)."""

from __future__ import annotations

import time

import pytest

from models.clusters import load_serving
from models.pair_table import PairPrediction, PairTable
from streams import codec
from streams.recommend_client import RecommendationClient
from streams.records import InteractionEvent
from streams.replay import make_producer
from streams.topics import INTERACTIONS, topic_name
from tests.harness import run_worker, wait_until

pytestmark = pytest.mark.integration


def test_a_changed_pair_is_re_inferred_within_seconds(serving_settings, tmp_path):
    settings = serving_settings.model_copy(update={"pair_refresh_interval_s": 0.5, "pair_refresh_min_interval_s": 0.0})
    clusters = load_serving(settings)
    a, b, c, d = sorted(clusters.clusters)[:4]
    item = {cid: sorted(i for i, x in clusters.item_to_cluster.items() if x == cid)[0] for cid in (a, b, c, d)}
    producer = make_producer(settings)
    topic = topic_name(settings, INTERACTIONS)
    sent = {"n": 0}

    def explore(user: str, path: list[str]) -> None:
        for cluster in path:  # in event time order: each a positive engagement
            sent["n"] += 1
            event = InteractionEvent(f"probe-{sent['n']}", user, item[cluster], 1_700_000_000.0 + sent["n"], "like")
            producer.produce(topic, key=user.encode(), value=codec.dumps(event))
        producer.flush(10)

    table = PairTable.from_settings(settings, clusters.version, refresh_s=0.0)

    def row():
        rows = [rows[(a, b)] for rows in table.load().values() if (a, b) in rows]
        return rows[0] if rows else None

    with run_worker(settings, tmp_path) as worker:
        explore("u1", [a, b, c])
        first = wait_until(lambda: (r := row()) is not None and r.fingerprint == (c,) and r, 120,
                           "the pair (a, b) to be inferred with c as its top next cluster")
        changed_at = time.monotonic()
        explore("u2", [a, b, d])
        explore("u3", [a, b, d])  # d now leads: the retrieved knowledge of (a, b) changed
        second = wait_until(lambda: (r := row()) is not None and r.fingerprint == (d, c) and r, 120,
                            "the pair (a, b) to be re-inferred after its top next clusters changed")
        lag = time.monotonic() - changed_at
        print(f"\npair refresh: knowledge change -> row re-inferred in {lag:.1f}s")
        assert second.updated_at > first.updated_at
        assert second.novel not in (a, b) and second.novel in clusters.clusters
        assert second.top_next == ((d, 2), (c, 1))
        inferred = sum(v for k, v in worker.metrics().items() if k.startswith("explorer_pair_inferences_total"))
        assert inferred >= 2

        # A row another writer stored (another worker's refresher, `explorer pairs build`) reaches this worker's
        # in-memory table within a scan and serves its users: (c, a) answered with e, marked as the test's row.
        e = next(cid for cid in sorted(clusters.clusters) if cid not in (a, b, c, d))
        external = PairPrediction(c1=c, c2=a, novel=e, model_version=second.model_version,
                                  knowledge_version="written-by-the-test", fingerprint=(),
                                  updated_at=time.time() + 3_600)  # newer than anything the worker infers
        table.upsert([external])
        explore("u9", [c, a])
        with RecommendationClient(settings) as client:
            def served_from_the_external_row():
                rec = client.recommend("u9", timeout_s=60).recommendation
                return rec["history_clusters"] == [c, a] and rec["source"] == "table" and \
                    rec["novel_cluster"]["id"] == e and rec["knowledge_version"] == "written-by-the-test"
            wait_until(served_from_the_external_row, 60, "the worker to serve the row another writer stored",
                       poll_s=1.0)
        assert worker.alive(), worker.log_tail()

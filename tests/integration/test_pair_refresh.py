"""The pair table follows the streaming knowledge: when a pair's top next clusters change, the worker re-infers
that pair's row in the background within seconds (agents/pair_refresh.py)."""

from __future__ import annotations

import time

import pytest

from models.clusters import load_serving
from models.pair_table import PairTable
from streams import codec
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
        assert worker.alive(), worker.log_tail()

"""Freshness: how long from producing an event until its effect is visible through the retrieval API.

For each probe user it publishes engagements with clusters A then B, and then — timed — one with C, which makes
the transition (A, B) -> C; it polls `KnowledgeStore.top_next(A, B)` (a separate reader, as the recommender is)
until that count has grown by one. Prints p50/p95 and the LanceDB fragment counts afterwards.

    python -m bench.freshness [--probes 40]

Needs a running broker at EXPLORER_KAFKA_BOOTSTRAP (`explorer broker start`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import isolated, print_table
from models.clusters import build_clusters
from models.knowledge import KnowledgeStore
from streams.records import InteractionEvent
from streams.replay import make_producer
from streams import codec
from streams.settings import Settings
from streams.topics import INTERACTIONS, topic_name
from streams.worker_process import free_port, run_worker, wait_until


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=40)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = isolated(Settings(), "fresh", data_dir=Path(tmp) / "data", web_port=free_port())
        clusters = build_clusters(settings)
        a, b, c = sorted(clusters.clusters)[:3]
        item = {cid: next(i for i, x in sorted(clusters.item_to_cluster.items()) if x == cid) for cid in (a, b, c)}
        topic = topic_name(settings, INTERACTIONS)
        producer = make_producer(settings)

        def send(user: str, cluster: str, n: int) -> None:
            event = InteractionEvent(f"fresh-{user}-{n}", user, item[cluster], time.time(), "like", None)
            producer.produce(topic, key=user.encode(), value=codec.dumps(event))
            producer.flush(10)

        latencies: list[float] = []
        with run_worker(settings, Path(tmp)) as worker:
            reader = KnowledgeStore.from_settings(settings, clusters.version, refresh_s=0.0)

            def count() -> int:
                return dict(reader.top_next(a, b, n=50)).get(c, 0)

            for probe in range(args.probes):
                user = f"probe-{probe}"
                send(user, a, 0)
                send(user, b, 1)
                before = count()
                started = time.perf_counter()
                send(user, c, 2)
                wait_until(lambda: count() > before, 30, f"probe {probe} to become visible", poll_s=0.01)
                latencies.append(time.perf_counter() - started)
            fragments = reader.fragment_counts()
            metrics = worker.metrics()

    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    print(f"\nfreshness: event produced -> visible in top_next ({args.probes} probes)")
    print_table([
        ("p50", f"{statistics.median(ordered) * 1000:,.0f} ms"),
        ("p95", f"{p95 * 1000:,.0f} ms  (target <= 2000 ms)"),
        ("max", f"{ordered[-1] * 1000:,.0f} ms"),
        ("LanceDB fragments after the run", ", ".join(f"{k}={v}" for k, v in sorted(fragments.items()))),
        ("knowledge syncs", f"{metrics.get('explorer_knowledge_sync_seconds_count', 0):,.0f}"),
    ])


if __name__ == "__main__":
    main()

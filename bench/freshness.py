"""Freshness: how long from producing an event until its effect is visible through the retrieval API.

For each probe user it publishes engagements with clusters A then B, and then — timed — one with C, which makes
the transition (A, B) -> C; it polls `KnowledgeStore.top_next(A, B)` (a separate reader, as the recommender is)
until that count has grown by one. Prints p50/p95 and the LanceDB fragment counts afterwards.

Two phases in one run: probes on an idle worker (the baseline), then probes while a replay of `--under-replay`
synthetic events (event time up to now, other users) is published at full speed (or `--replay-rate`) into the same
topic, from a process of its own (`--replay-in-process`: a thread of this one, as before): a probe then waits
behind whatever backlog its partition has, which is what freshness under load means. It also prints how many events
the worker ingested while the replay was published and how long after the last one it had ingested them all (its
catch-up: at full speed the publisher and the worker race for the same cores).

    python -m bench.freshness [--probes 40] [--under-replay 300000] [--replay-rate EVENTS_PER_S]

Needs a running broker at EXPLORER_KAFKA_BOOTSTRAP (`explorer broker start`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import BackgroundReplay, histogram_mean_ms, isolated, print_table
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
    parser.add_argument("--under-replay", type=int, default=300_000, metavar="EVENTS",
                        help="then probe again while this many events are replayed (0: idle phase only)")
    parser.add_argument("--replay-rate", type=float, default=None, help="events/s of that replay (default: full speed)")
    parser.add_argument("--replay-nice", type=int, default=0, metavar="N",
                        help="run the replay's publisher process at this niceness (19: it only takes the CPU the "
                             "worker and broker leave, as if upstream ran elsewhere; default 0, an equal share)")
    parser.add_argument("--replay-in-process", action="store_true",
                        help="publish that replay from a thread of this process, as the bench did before (the probes "
                             "then share its GIL); default: a process of its own")
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

        idle: list[float] = []
        loaded: list[float] = []
        replay_seconds = caught_up_s = ingested_while_published = 0.0
        with run_worker(settings, Path(tmp)) as worker:
            reader = KnowledgeStore.from_settings(settings, clusters.version, refresh_s=0.0)

            def count() -> int:
                return dict(reader.top_next(a, b, n=50)).get(c, 0)

            def probe(name: str) -> float:
                send(name, a, 0)
                send(name, b, 1)
                before = count()
                started = time.perf_counter()
                send(name, c, 2)
                wait_until(lambda: count() > before, 60, f"probe {name} to become visible", poll_s=0.01)
                return time.perf_counter() - started

            idle = [probe(f"probe-{n}") for n in range(args.probes)]
            before_replay = worker.metrics()
            if args.under_replay:
                now = time.time()  # the replay's event time ends now: nothing of it is late next to the probes
                published: dict[str, float] = {}

                def note_the_end() -> None:  # what the worker had ingested when the last event went out
                    published["ingested"] = worker.metric("explorer_events_in_total")

                replay = BackgroundReplay(settings, args.under_replay, args.replay_rate,
                                          in_process=args.replay_in_process, nice=args.replay_nice,
                                          on_end=note_the_end, users=5_000, seed=5,
                                          start_ts=now - 3_600.0, mean_gap_s=3_600.0 / args.under_replay,
                                          user_prefix="load-")
                replay.start()
                n = 0
                while replay.running:  # probes only while the replay is being published
                    loaded.append(probe(f"loaded-{n}"))
                    n += 1
                replay.join()  # raises if the publisher failed
                replay_seconds = replay.ended - replay.started
                ingested_before = before_replay.get("explorer_events_in_total", 0)
                expected = ingested_before + args.under_replay + 3 * len(loaded)  # the probes' events too
                wait_until(lambda: worker.metric("explorer_events_in_total") >= expected, 600,
                           "the worker to catch up on the replay", poll_s=0.05)
                caught_up_s = time.perf_counter() - replay.ended
                ingested_while_published = published["ingested"] - ingested_before
            fragments = reader.fragment_counts()
            metrics = worker.metrics()

    def slower(name: str, le: str) -> float:  # observations above the bucket bound `le` over the loaded phase
        def above(samples: dict[str, float]) -> float:
            return samples.get(f"{name}_count", 0) - samples.get(f"{name}_bucket{{le={le}}}", 0)
        return above(metrics) - above(before_replay)

    def mean_ms(name: str, labels: str = "") -> str:  # over the loaded phase
        return histogram_mean_ms(metrics, before_replay, name, labels)

    def row(name: str, values: list[float]) -> tuple[str, str]:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        return (name, f"p50 {statistics.median(ordered) * 1000:,.0f} ms, p95 {p95 * 1000:,.0f} ms, max "
                      f"{ordered[-1] * 1000:,.0f} ms ({len(ordered)} probes)")

    print("\nfreshness: event produced -> visible in top_next")
    rows = [row("idle worker (baseline)", idle)]
    if loaded:
        pace = f"{args.replay_rate:,.0f}/s" if args.replay_rate else "full speed"
        if args.replay_nice:
            pace += f" from a publisher at nice {args.replay_nice}"
        rows.append(row(f"while {args.under_replay:,} events are published ({pace}, "
                        f"{args.under_replay / replay_seconds:,.0f}/s)", loaded))
    rows += [
        ("target", "p95 <= 500 ms under the replay"),
        ("LanceDB fragments after the run", ", ".join(f"{k}={v}" for k, v in sorted(fragments.items()))),
        ("knowledge syncs", f"{metrics.get('explorer_knowledge_sync_seconds_count', 0):,.0f}, mean "
         f"{1000 * metrics.get('explorer_knowledge_sync_seconds_sum', 0) / max(1, metrics.get('explorer_knowledge_sync_seconds_count', 0)):,.0f} ms each"),
    ]
    if loaded:  # where a probe's time goes under the replay (means over that phase)
        rows += [
            ("under the replay: events the worker ingested while it was published",
             f"{ingested_while_published:,.0f} ({ingested_while_published / replay_seconds:,.0f}/s)"),
            ("the worker caught up (every replayed event ingested) after the last was published",
             f"{caught_up_s:.1f} s"),
            ("under the replay: a batch's oldest record, appended -> processed", mean_ms("explorer_event_latency_seconds")),
            ("under the replay: batches whose oldest record waited over 0.5 / 1 / 2.5 s", " / ".join(
                f"{slower('explorer_event_latency_seconds', le):,.0f}" for le in ("0.5", "1.0", "2.5"))),
            ("under the replay: full garbage collections (gen 2), mean pause",
             mean_ms("explorer_gc_pause_seconds", "{generation=2}")),
            ("under the replay: processing one batch", mean_ms("explorer_batch_processing_seconds")),
            ("under the replay: one knowledge sync", mean_ms("explorer_knowledge_sync_seconds")),
            ("under the replay: knowledge syncs over 0.25 / 0.5 / 1 s", " / ".join(
                f"{slower('explorer_knowledge_sync_seconds', le):,.0f}" for le in ("0.25", "0.5", "1.0"))),
        ]
    print_table(rows)


if __name__ == "__main__":
    main()

"""Request flood: how much of the stream a burst of requests takes, with and without the bound on requests' share of
the event loop (agents/priority.py, `EXPLORER_REQUEST_PRIORITY_MAX_SHARE`).

Each arm gets topics of its own, filled before its worker starts: `--events` synthetic events (streams/loadgen.py)
and `--requests` recommendation requests of users nobody has seen (each answered from the fallback: a retrieval and a
grounding on the worker's I/O thread, so requests stay in flight while the worker catches up). The worker catches up
on both at once; the bench reports its catch-up rate on the events (its own clock, first batch to last) against the
same worker catching up on the events alone (the baseline, same run), and how fast it answered the requests (polled
metrics: when the last one was answered). Arms alternate over `--rounds`.

    python -m bench.request_flood [--events 200000] [--requests 20000] [--shares 1.0 0.5] [--rounds 2]

Needs a running broker at EXPLORER_KAFKA_BOOTSTRAP (`explorer broker start`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import orjson
from confluent_kafka import Producer

from bench.common import isolated, print_table
from bench.ingest import clusters_dir
from streams.kafka_config import confluent_config
from streams.loadgen import synthetic_events
from streams.records import RecommendationRequest
from streams.replay import publish_events
from streams.settings import Settings
from streams.topics import RECOMMENDATION_REQUESTS, topic_name
from streams.worker_process import free_port, run_worker, wait_until


class Arm(NamedTuple):
    flood_s: float  # first batch -> every request answered
    answered: float
    catch_up_s: float  # first batch -> last event ingested


def publish_requests(settings: Settings, count: int) -> None:
    producer = Producer(confluent_config(settings))
    topic = topic_name(settings, RECOMMENDATION_REQUESTS)
    tag = uuid.uuid4().hex[:6]
    for n in range(count):
        user = f"flood-{tag}-{n}"
        request = RecommendationRequest(request_id=f"flood-{tag}-{n}", user_id=user, ts=time.time())
        while True:
            try:
                producer.produce(topic, key=user.encode(), value=orjson.dumps(request))
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("requests not delivered to the broker")


def answered(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("explorer_recommendations_out_total"))


def run_arm(base: Settings, root: Path, data: Path, events: int, requests: int, share: float) -> Arm:
    settings = isolated(base, "flood", data_dir=data, web_port=free_port(), request_priority_max_share=share)
    publish_events(settings, synthetic_events(events))
    if requests:
        publish_requests(settings, requests)
    flood_s = 0.0
    with run_worker(settings, root) as worker:
        while True:  # poll: the moment the last request is answered is what the flood's window ends at
            metrics = worker.metrics()
            if requests and not flood_s and answered(metrics) >= requests:
                flood_s = time.time() - metrics.get("explorer_ingest_first_batch_at_seconds", time.time())
            if metrics.get("explorer_events_in_total", 0.0) >= events and (not requests or flood_s):
                break
            time.sleep(0.05)
        wait_until(lambda: worker.metric("explorer_events_in_total") >= events, 60, "every event")
        metrics = worker.metrics()
        catch_up_s = (metrics["explorer_ingest_last_batch_at_seconds"]
                      - metrics["explorer_ingest_first_batch_at_seconds"])
    return Arm(flood_s, answered(metrics), catch_up_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--shares", type=float, nargs="+", default=[1.0, 0.5],
                        help="EXPLORER_REQUEST_PRIORITY_MAX_SHARE of each arm (1.0: no bound, the code before it)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    base = Settings()
    results: dict[str, list[Arm]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = clusters_dir(root, base)
        for round_ in range(args.rounds):
            arms = [("events alone (baseline)", 0, base.request_priority_max_share)] + [
                (f"events + {args.requests:,} requests, max share {share:g}", args.requests, share)
                for share in args.shares]
            for name, requests, share in arms:
                print(f"round {round_ + 1}: {name}...", flush=True)
                results.setdefault(name, []).append(run_arm(base, root, data, args.events, requests, share))

    alone = statistics.median(args.events / arm.catch_up_s for arm in next(iter(results.values())))
    rows = []
    for name, arms in results.items():
        rates = [args.events / a.catch_up_s for a in arms]
        rows.append((name, "catch-up " + ", ".join(f"{r:,.0f} events/s ({r / alone:.2f} of alone)" for r in rates)))
        if arms[0].flood_s:
            rows.append(("  requests answered, per second / all answered after",
                         ", ".join(f"{a.answered:,.0f}, {a.answered / a.flood_s:,.0f}/s / {a.flood_s:.1f} s"
                                   for a in arms)))
    print(f"\nrequest flood ({args.events:,} events, {args.requests:,} requests; ratios against the median events-alone "
          f"catch-up of this run, {alone:,.0f} events/s)")
    print_table(rows)

if __name__ == "__main__":
    main()

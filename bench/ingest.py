"""Ingest benchmark: events/s through the Faust validation agent vs a plain confluent-kafka consumer (the ceiling)
reading the same topic in the same run.

    python -m bench.ingest [--events 300000] [--partitions 8]

Needs a running broker at EXPLORER_KAFKA_BOOTSTRAP (`explorer broker start`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.common import isolated, print_table
from streams.kafka_config import confluent_config
from streams.loadgen import synthetic_events
from streams.replay import publish_events
from streams.settings import Settings
from streams.topics import INTERACTIONS, topic_name
from streams.worker_process import free_port, run_worker, wait_until


def plain_consumer_rate(settings: Settings, topic: str, expected: int) -> float:
    """The ceiling: librdkafka consuming the topic, doing nothing per message but touching its value."""
    from confluent_kafka import Consumer

    consumer = Consumer(confluent_config(settings, **{
        "group.id": f"{settings.app_id}-ceiling", "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "fetch.min.bytes": 1, "queued.min.messages": 200_000,
    }))
    consumer.subscribe([topic])
    seen = 0
    started = None
    while seen < expected:
        batch = consumer.consume(num_messages=10_000, timeout=1.0)
        if batch and started is None:
            started = time.perf_counter()  # measure reading, not the group join before the first fetch
        for message in batch:
            if message.error() is None:
                message.value()
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def agent_rate(settings: Settings, expected: int, log_dir: Path, workers: int) -> tuple[float, dict[str, float]]:
    """Events/s of `workers` real worker processes in one consumer group, from the first event to the last."""
    with ExitStack() as stack:
        procs = [stack.enter_context(run_worker(settings.model_copy(update={"web_port": free_port()}), log_dir))
                 for _ in range(workers)]

        def consumed() -> float:
            return sum(worker.metric("explorer_events_in_total") for worker in procs)

        wait_until(lambda: consumed() > 0, 120, "the first event")
        started = time.perf_counter()
        first = consumed()
        wait_until(lambda: consumed() >= expected, 600, "all events", poll_s=0.05)
        elapsed = time.perf_counter() - started
        metrics: dict[str, float] = {}
        for worker in procs:
            for name, value in worker.metrics().items():
                metrics[name] = metrics.get(name, 0.0) + value
    return (expected - first) / elapsed, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=None, help="EXPLORER_STREAM_BATCH_SIZE for the agent")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts to measure, each in its own consumer group (default: 1 2)")
    args = parser.parse_args()

    base = Settings()
    updates: dict[str, object] = {"interactions_partitions": args.partitions, "web_port": free_port()}
    if args.batch:
        updates["stream_batch_size"] = args.batch
    with tempfile.TemporaryDirectory() as tmp:
        settings = isolated(base, "ingest", data_dir=Path(tmp) / "data", **updates)
        topic = topic_name(settings, INTERACTIONS)
        print(f"publishing {args.events:,} synthetic events to {topic} ({args.partitions} partitions)...")
        stats = publish_events(settings, synthetic_events(args.events))
        print(f"  producer: {stats.rate:,.0f} events/s")

        ceiling = plain_consumer_rate(settings, topic, args.events)
        results = []
        for count in args.workers:
            group = settings.model_copy(update={"app_id": f"{settings.app_id}-w{count}"})
            results.append((count, *agent_rate(group, args.events, Path(tmp), count)))

    print("\ningest benchmark (same topic, same run)")
    rows = [("plain confluent-kafka consumer (ceiling)", f"{ceiling:,.0f} events/s")]
    for count, rate, metrics in results:
        rejected = sum(v for k, v in metrics.items() if k.startswith("explorer_events_rejected_total"))
        rows += [
            (f"Faust validation agent, {count} worker(s)", f"{rate:,.0f} events/s"),
            ("  ratio to ceiling", f"{rate / ceiling:.3f}  (target >= 0.2)"),
            ("  valid / rejected", f"{metrics.get('explorer_events_valid_total', 0):,.0f} / {rejected:,.0f}"),
        ]
    print_table(rows)


if __name__ == "__main__":
    main()

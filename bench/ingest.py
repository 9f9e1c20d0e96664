"""Ingest benchmark: the Faust worker against the same topic read without a framework, in the same run.

    python -m bench.ingest [--events 300000] [--partitions 8] [--workers 1 2] [--reroute]

Readers, each in its own consumer group over the same synthetic events (MovieLens-shaped, streams/loadgen.py):

* plain confluent-kafka consumer doing nothing (the ceiling), and aiokafka's `getmany` loop (Faust's transport);
* the same work without Faust in one process (bench/baselines.py: validation, the partition state, dead letters,
  changelog writes delivered before commits, the LanceDB sync);
* the Faust worker validating only (no clusters), and the full pipeline (validation + transitions + trends + recent
  items + LanceDB sync), with 1..N workers;
* with `--reroute`: the full pipeline again on the same events produced with librdkafka's `random` partitioner
  (7 of 8 records arrive on another partition than their user's and take the repartition hop).

Needs a running broker at EXPLORER_KAFKA_BOOTSTRAP (`explorer broker start`).
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from bench.baselines import aiokafka_rate, plain_consumer_rate, same_work_baseline
from bench.common import ingest_rate, isolated, print_table
from streams.loadgen import synthetic_events
from streams.replay import publish_events
from streams.settings import Settings
from streams.topics import INTERACTIONS, topic_name
from streams.worker_process import free_port, run_worker, wait_until


def agent_rate(settings: Settings, expected: int, log_dir: Path, workers: int) -> tuple[float, dict[str, float]]:
    """Events/s of `workers` real worker processes in one consumer group, from the first event to the last.

    The workers are started at once: one after another, the first read the whole topic while the next still started,
    and the row measured one worker and a rebalance."""
    ports: set[int] = set()
    while len(ports) < workers:  # none is bound before the workers start: make sure no two get the same port
        ports.add(free_port())
    with ExitStack() as stack, ThreadPoolExecutor(workers) as starter:
        managers = [run_worker(settings.model_copy(update={"web_port": port}), log_dir) for port in sorted(ports)]
        started = [starter.submit(manager.__enter__) for manager in managers]
        procs, failures = [], []
        for manager, future in zip(managers, started):
            try:
                procs.append(future.result())
                stack.push(manager.__exit__)  # stopped when the measurement ends, or on a failure below
            except Exception as exc:  # every started worker is still stopped by the stack
                failures.append(exc)
        if failures:
            raise failures[0]

        def done() -> bool:  # every record read, and every rerouted one read again where its user lives
            metrics = [worker.metrics() for worker in procs]
            total = sum(m.get("explorer_events_in_total", 0) for m in metrics)
            out = sum(v for m in metrics for k, v in m.items() if k.startswith("explorer_events_misrouted_total"))
            back = sum(v for m in metrics for k, v in m.items() if k.startswith("explorer_events_rerouted_in_total"))
            return total >= expected and back >= out

        wait_until(done, 600, "all events", poll_s=0.25)
        each = [worker.metrics() for worker in procs]
    metrics: dict[str, float] = {f"worker {i}: valid": samples.get("explorer_events_valid_total", 0.0)
                                 for i, samples in enumerate(each, 1)}
    for samples in each:
        for name, value in samples.items():
            metrics[name] = max(metrics.get(name, 0.0), value) if name.endswith("_at_seconds") else (
                metrics.get(name, 0.0) + value)
    return ingest_rate(each, expected), metrics


def clusters_dir(root: Path, base: Settings) -> Path:
    """A data dir holding MovieLens clusters (synthetic items are MovieLens item ids)."""
    from models.clusters import build_clusters

    data = root / "with-clusters"
    build_clusters(base.model_copy(update={"data_dir": data}))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts for the full pipeline, each in its own consumer group (default: 1 2)")
    parser.add_argument("--reroute", action="store_true", help="also measure records that all need the reroute")
    args = parser.parse_args()

    base = Settings()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        counting = clusters_dir(root, base)
        settings = isolated(base, "ingest", data_dir=root / "plain", interactions_partitions=args.partitions,
                            web_port=free_port(), recommendations_enabled=False)
        topic = topic_name(settings, INTERACTIONS)
        print(f"publishing {args.events:,} synthetic events to {topic} ({args.partitions} partitions)...")
        print(f"  producer: {publish_events(settings, synthetic_events(args.events)).rate:,.0f} events/s")

        def group(name: str, **updates: object) -> Settings:
            return settings.model_copy(update={"app_id": f"{settings.app_id}-{name}", **updates})

        ceiling = plain_consumer_rate(settings, topic, args.events)
        transport = aiokafka_rate(settings, topic, args.events)
        no_framework = same_work_baseline(group("same", data_dir=root / "same"), counting, args.partitions)(args.events)
        validate_only, _ = agent_rate(group("validate"), args.events, root, 1)
        full: dict[int, tuple[float, dict[str, float]]] = {}
        for count in args.workers:
            full[count] = agent_rate(group(f"full{count}", data_dir=counting), args.events, root, count)
        rerouted = None
        if args.reroute:
            random_settings = isolated(base, "ingest-random", data_dir=counting,
                                       interactions_partitions=args.partitions, web_port=free_port(),
                                       recommendations_enabled=False)
            publish_events(random_settings, synthetic_events(args.events), partitioner="random")
            rerouted = agent_rate(random_settings, args.events, root, 1)

    rows += [
        ("plain confluent-kafka consumer, does nothing (ceiling)", f"{ceiling:,.0f} events/s"),
        ("plain aiokafka getmany loop (Faust's transport)", f"{transport:,.0f} events/s"),
        ("same work without Faust, one process (baseline)", f"{no_framework:,.0f} events/s"),
        ("Faust worker, validation only", f"{validate_only:,.0f} events/s"),
        ("  / ceiling", f"{validate_only / ceiling:.3f}  (target >= 0.1)"),
    ]
    for count, (rate, metrics) in full.items():
        rejected = sum(v for k, v in metrics.items() if k.startswith("explorer_events_rejected_total"))
        rows += [
            (f"Faust worker, full pipeline, {count} worker(s)", f"{rate:,.0f} events/s"),
            ("  / same work without Faust", f"{rate / no_framework:.2f}  (target >= 0.5)"),
            ("  / aiokafka loop", f"{rate / transport:.3f}"),
            ("  valid / rejected", f"{metrics.get('explorer_events_valid_total', 0):,.0f} / {rejected:,.0f}"),
        ]
        if count > 1:  # how the work split; validation is at least once, so a rebalance re-validates some records
            rows.append(("  valid, by worker (in start order)",
                         " / ".join(f"{metrics.get(f'worker {i}: valid', 0):,.0f}" for i in range(1, count + 1))))
            idle = [i for i in range(1, count + 1) if not metrics.get(f"worker {i}: valid", 0)]
            if idle:  # a worker whose join came after the others had read the whole topic
                rows.append(("  note", f"worker(s) {', '.join(map(str, idle))} got no work: this row measured "
                                       f"{count - len(idle)} worker(s), not {count}"))
    if rerouted is not None:
        rate, metrics = rerouted
        one = full[min(full)][0]
        rows += [
            ("Faust worker, full pipeline, every record from librdkafka's random partitioner", f"{rate:,.0f} events/s"),
            ("  rerouted records", f"{metrics.get('explorer_events_misrouted_total{topic=' + topic_name(random_settings, INTERACTIONS) + '}', 0):,.0f}"),
            ("  / the same with murmur2 (cost of the reroute)", f"{rate / one:.2f}"),
        ]
    print("\ningest benchmark (same events, same run)")
    print_table(rows)


if __name__ == "__main__":
    main()

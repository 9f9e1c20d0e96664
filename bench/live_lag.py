"""Who keeps up with a full-speed publisher on this machine? The worker against the same work without Faust, live.

    python -m bench.live_lag [--events 300000] [--partitions 8]

`bench.ingest` measures catch-up from a full topic: each reader has the machine to itself. Here each reader starts
first and the synthetic events (streams/loadgen.py) are published while it reads, at full speed, from a process of
their own (bench.common.BackgroundReplay) -- the condition of `bench.freshness --under-replay` without its probes.
For each reader, in its own topic and consumer group: the publisher's rate, the reader's rate over the whole run,
and how long after the last event was published the reader had everything -- the lag a fresh event waits behind.

Readers: the same work without Faust in one process (bench/baselines.py, under the worker's GC settings) and the
Faust worker's full pipeline (validation + transitions + trends + recent items + LanceDB sync).

Needs a running broker at EXPLORER_KAFKA_BOOTSTRAP (`explorer broker start`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.baselines import same_work_baseline
from bench.common import BackgroundReplay, ingest_rate, isolated, print_table
from bench.ingest import clusters_dir
from streams.settings import Settings
from streams.worker_process import free_port, run_worker, wait_until


def baseline_run(base: Settings, root: Path, counting: Path, events: int, partitions: int) -> tuple[float, float, float]:
    settings = isolated(base, "live-same", data_dir=root / "same", interactions_partitions=partitions)
    measure = same_work_baseline(settings, counting, partitions)
    published = BackgroundReplay(settings, events, None, users=5_000, seed=11)
    published.start()
    rate = measure(events)
    done = time.perf_counter()
    publisher_rate = published.join()
    return publisher_rate, rate, done - published.ended


def worker_run(base: Settings, root: Path, counting: Path, events: int, partitions: int) -> tuple[float, float, float]:
    settings = isolated(base, "live-worker", data_dir=counting, interactions_partitions=partitions,
                        web_port=free_port(), recommendations_enabled=False)
    with run_worker(settings, root) as worker:
        wait_until(lambda: worker.metric("explorer_worker_healthy") >= 1, 120, "the worker to start", poll_s=0.25)
        published = BackgroundReplay(settings, events, None, users=5_000, seed=11)
        published.start()
        wait_until(lambda: worker.metric("explorer_events_in_total") >= events, 600, "the worker to read everything",
                   poll_s=0.05)
        done = time.perf_counter()
        rate = ingest_rate([worker.metrics()], events)
    publisher_rate = published.join()
    return publisher_rate, rate, done - published.ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()

    base = Settings()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        counting = clusters_dir(root, base)
        for name, run in (("same work without Faust, one process", baseline_run),
                          ("Faust worker, full pipeline", worker_run)):
            published, rate, behind = run(base, root, counting, args.events, args.partitions)
            rows += [(name, f"read {rate:,.0f} events/s while {published:,.0f}/s were published; had everything "
                            f"{behind:.1f} s after the last was published")]
    print(f"\nlive lag: {args.events:,} synthetic events published at full speed while each reader reads")
    print_table(rows)


if __name__ == "__main__":
    main()

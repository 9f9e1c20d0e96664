"""Where a worker's CPU goes: py-spy samples a real `explorer worker` while it catches up on a backlog of synthetic
events (full pipeline: clusters built), and the samples are summed by function (self time) and by area.

    python -m bench.profile_worker [--events 300000] [--seconds 8]

Needs a running broker at EXPLORER_KAFKA_BOOTSTRAP and py-spy (`pip install -e .[bench]`; it needs ptrace rights).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import isolated, print_table
from models.clusters import build_clusters
from streams.loadgen import synthetic_events
from streams.replay import publish_events
from streams.settings import Settings
from streams.worker_process import free_port, run_worker, wait_until

# Areas by the file a sample's innermost frame is in (first match wins).
AREAS = [
    ("partition state (transitions, counts)", re.compile(r"models/(partition_state|transitions|counts)\.py")),
    ("validation + orjson decode", re.compile(r"streams/(validation|records|codec)\.py")),
    ("outbox, changelog encoding, acks", re.compile(r"agents/(outbox|acks|state)\.py")),
    ("ingest agent", re.compile(r"agents/ingest\.py")),
    ("knowledge sync + LanceDB", re.compile(r"(models/knowledge|agents/knowledge_sync|lancedb|lance|pyarrow)")),
    ("Faust + mode (conductor, consumer, streams)", re.compile(r"(faust|mode)/")),
    ("aiokafka (fetch, produce, protocol)", re.compile(r"aiokafka/")),
    ("asyncio event loop", re.compile(r"asyncio/")),
]
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^:()]+)(?::\d+)?\)$")


def area_of(file: str) -> str:
    return next((name for name, pattern in AREAS if pattern.search(file)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")

    with tempfile.TemporaryDirectory() as tmp:
        settings = isolated(Settings(), "profile", data_dir=Path(tmp) / "data", web_port=free_port(),
                            recommendations_enabled=False)
        build_clusters(settings)
        publish_events(settings, synthetic_events(args.events))
        raw = Path(tmp) / "samples.txt"
        with run_worker(settings, Path(tmp)) as worker:
            wait_until(lambda: worker.metric("explorer_events_in_total") > 10_000, 120, "the worker to start")
            subprocess.run([spy, "record", "--pid", str(worker.process.pid), "--duration", str(args.seconds),
                            "--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking"],
                           check=True, capture_output=True)
            consumed = worker.metric("explorer_events_in_total")
        samples_text = raw.read_text()  # before the temporary folder goes

    by_function: collections.Counter[str] = collections.Counter()
    by_area: collections.Counter[str] = collections.Counter()
    total = 0
    for line in samples_text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        found = FRAME.match(leaf)
        function, file = (found["function"], found["file"]) if found else (leaf, "")
        samples = int(count)
        total += samples
        by_function[f"{function} ({file.split('site-packages/')[-1]})"] += samples
        by_area[area_of(file)] += samples
    print(f"\nworker profile: {total} samples over {args.seconds}s ({consumed:,.0f} events consumed by then)")
    print_table([(area, f"{100 * n / total:.0f}%") for area, n in by_area.most_common()])
    print("\ntop functions by self time")
    print_table([(name[:110], f"{100 * n / total:.1f}%") for name, n in by_function.most_common(15)])


if __name__ == "__main__":
    main()

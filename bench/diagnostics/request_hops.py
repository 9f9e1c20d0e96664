"""Summarise what bench/diagnostics/sitecustomize.py wrote: per step, the mean/p50/p90/max of the last N requests
(those timed under the replay: `bench.recommend_latency` times them last) and of the N after the first 5 (idle).

    python -m bench.diagnostics.request_hops $TMPDIR/explorer-request-hops-<pid>.json [--last 97]
"""

from __future__ import annotations

import argparse
import json


def spread(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"mean {1000 * sum(ordered) / len(ordered):6.1f}  p50 {1000 * ordered[len(ordered) // 2]:6.1f}  "
            f"p90 {1000 * ordered[int(0.9 * len(ordered))]:6.1f}  max {1000 * ordered[-1]:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--last", type=int, default=97, help="requests per phase (the bench's table hits)")
    args = parser.parse_args()
    with open(args.path) as source:
        samples = json.load(source)
    for step in sorted(samples):
        values = samples[step]
        print(f"{step:34s} idle  {spread(values[5:5 + args.last])}")
        print(f"{'':34s} under {spread(values[-args.last:])}")


if __name__ == "__main__":
    main()

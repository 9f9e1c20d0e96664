"""Rendering transition counts and trends for `explorer knowledge export` (JSON or CSV)."""

from __future__ import annotations

import csv
import io

from models.counts import DAY_S, AllCounts, TransitionCounts, window_counts, window_trends
from streams import codec


def _rows(counts: TransitionCounts) -> list[dict[str, object]]:
    return [
        {"c1": c1, "c2": c2, "c3": c3, "count": n}
        for (c1, c2), row in sorted(counts.items())
        for c3, n in sorted(row.items(), key=lambda item: (-item[1], item[0]))
    ]


def render_export(counts: AllCounts, clusters_version: str, window_days: tuple[int, ...], now: float | None,
                  fmt: str) -> bytes:
    days = [*counts.daily, *counts.trends]
    as_of = now if now is not None else ((max(days) + 1) * DAY_S - 1 if days else 0.0)
    windows = {f"{d}d": window_counts(counts, d, as_of) for d in window_days}
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["window", "c1", "c2", "c3", "count"])
        for name, table in [("all_time", counts.total), *windows.items()]:
            for row in _rows(table):
                writer.writerow([name, row["c1"], row["c2"], row["c3"], row["count"]])
        return buffer.getvalue().encode()
    return codec.dumps({
        "clusters_version": clusters_version,
        "as_of_ts": as_of,
        "transitions": {"all_time": _rows(counts.total), **{name: _rows(t) for name, t in windows.items()}},
        "trends": {f"{d}d": window_trends(counts, d, as_of) for d in window_days},
    })

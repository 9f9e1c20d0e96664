"""Cost and agility accounting: CPU seconds of update work, refresh counts, event -> can-change lag.

CPU time is process time (every thread of this process: llama.cpp and torch threads included), so a machine shared
with other jobs does not inflate it the way wall time would; the worker subprocess is measured from /proc.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Ledger:
    """What one strategy spent on keeping its answers fresh."""

    cpu_s: float = 0.0  # update work: inference of changed pairs, fine-tunes, knowledge reads
    wall_s: float = 0.0
    inferences: int = 0  # LLM calls made for the evaluated pairs
    model_updates: int = 0  # fine-tunes deployed
    pairs_changed: int = 0  # pairs (all of them, not only the evaluated ones) a full table refresh would re-infer
    lags_s: list[float] = field(default_factory=list)  # per point: chunk published -> its effect can show
    notes: list[str] = field(default_factory=list)

    @contextmanager
    def measure(self) -> Iterator[None]:
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu_s += time.process_time() - cpu
            self.wall_s += time.perf_counter() - wall


@contextmanager
def measured() -> Iterator[list[float]]:
    """Yields a list that holds [cpu_s, wall_s] of the block once it ends."""
    spent: list[float] = [0.0, 0.0]
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield spent
    finally:
        spent[0], spent[1] = time.process_time() - cpu, time.perf_counter() - wall


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process and its waited-for children (Linux /proc); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))  # fields 14-17 of proc(5)
    return (utime + stime + cutime + cstime) / ticks


def median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

"""Shared bench plumbing: an isolated topic set on the configured broker, a background replay, result printing."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from streams.settings import Settings
from streams.topics import create_topics, delete_deployment_topics


def isolated(settings: Settings, name: str, **updates: object) -> Settings:
    """Settings with a topic prefix and app id of their own; their topics are deleted when the bench exits."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    isolated_settings = settings.model_copy(update={"topic_prefix": f"bench-{tag}.", "app_id": f"bench-{tag}",
                                                    **updates})
    create_topics(isolated_settings)
    atexit.register(_delete_topics, isolated_settings)
    return isolated_settings


def _delete_topics(settings: Settings) -> None:
    try:
        delete_deployment_topics(settings)
    except Exception as exc:  # noqa: BLE001 -- the bench's numbers are printed; leftovers only cost broker start-up
        print(f"could not delete the bench's topics ({settings.topic_prefix}*): {exc}")


class BackgroundReplay:
    """Synthetic events (streams.loadgen) published in the background while a bench measures something else.

    By default from a process of its own, as an upstream service publishes: from a thread of the bench's process
    (`in_process`, how the benches did it before) the timed client shares one GIL with a publisher running at full
    speed, and its own send and receive wait for it -- time that is then counted as the worker's latency. The
    machine's cores are shared either way; `nice` lowers the publisher process's scheduling priority (an upstream
    service would run on machines of its own: at 19 it takes the CPU the worker and broker leave idle)."""

    def __init__(self, settings: Settings, count: int, rate: float | None, *, in_process: bool = False,
                 nice: int = 0, on_end: Callable[[], None] | None = None, **events: Any) -> None:
        if nice and in_process:
            raise ValueError("a publisher thread shares the bench's priority: nice needs its own process")
        args = (settings, count, rate, events, nice)
        self.count = count
        self.on_end = on_end  # called (in a watcher thread) the moment the last event is out
        self.started = self.ended = 0.0  # perf_counter
        self.error: Exception | None = None
        self._runner: threading.Thread | multiprocessing.process.BaseProcess = (
            threading.Thread(target=_publish_synthetic, args=args, daemon=True) if in_process
            else multiprocessing.get_context("spawn").Process(target=_publish_synthetic, args=args, daemon=True))
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self.started = time.perf_counter()
        self._runner.start()
        self._watcher.start()

    @property
    def running(self) -> bool:
        return self._watcher.is_alive()

    def join(self) -> float:
        """Wait for the last event to be out; the publisher's events/s."""
        self._watcher.join()
        if self.error is not None:
            raise self.error
        return self.count / (self.ended - self.started)

    def _watch(self) -> None:
        self._runner.join()
        self.ended = time.perf_counter()
        if isinstance(self._runner, multiprocessing.process.BaseProcess) and self._runner.exitcode != 0:
            self.error = RuntimeError(f"the replay's publisher process failed (exit code {self._runner.exitcode})")
        elif self.on_end is not None:
            self.on_end()


def _publish_synthetic(settings: Settings, count: int, rate: float | None, events: dict[str, Any],
                       nice: int = 0) -> None:
    from streams.loadgen import synthetic_events
    from streams.replay import publish_events

    if nice:
        os.nice(nice)

    publish_events(settings, synthetic_events(count, **events), rate=rate)


def ingest_rate(metrics: list[dict[str, float]], expected: int) -> float:
    """Events/s of workers (their `/metrics` snapshots) by their own clocks: from the first batch any processed to
    the last, no polling in the measurement; the first batches' records were taken before the clock started. A worker
    that processed no batch (it joined after the others had read everything) has no clock to count: its gauges are 0,
    which as a start time made the rate ~0 events/s."""
    working = [m for m in metrics if m.get("explorer_ingest_first_batch_at_seconds", 0) > 0]
    if not working:
        raise RuntimeError("no worker processed an interactions batch")
    first_at = min(m["explorer_ingest_first_batch_at_seconds"] for m in working)
    last_at = max(m["explorer_ingest_last_batch_at_seconds"] for m in working)
    first = sum(m["explorer_ingest_first_batch_records"] for m in working)
    return (expected - first) / (last_at - first_at)


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")


def histogram_mean_ms(after: dict[str, float], before: dict[str, float], name: str, labels: str = "") -> str:
    """Mean of a worker histogram between two `/metrics` snapshots (`WorkerProcess.metrics()`), as text."""
    count = after.get(f"{name}_count{labels}", 0) - before.get(f"{name}_count{labels}", 0)
    total = after.get(f"{name}_sum{labels}", 0) - before.get(f"{name}_sum{labels}", 0)
    return f"{1000 * total / count:,.0f} ms (mean of {count:,.0f})" if count else "none"

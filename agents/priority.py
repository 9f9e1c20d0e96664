"""Requests before bulk work on a worker's one event loop (the recommender marks requests in flight, the ingest agent
yields between slices of a batch), and the LLM's thread below both on the CPU."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def lower_thread_priority(nice: int) -> Callable[[], None]:
    """A thread initializer that makes the calling thread ``nice`` steps nicer (Linux: niceness is per thread and
    threads it starts inherit it; raising it needs no privilege). Elsewhere, or when refused, it logs and runs at
    normal priority: only speed depends on it."""

    def lower() -> None:
        if nice <= 0:
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
        except (AttributeError, OSError) as exc:
            log.info("could not lower the priority of thread %s: %s", threading.current_thread().name, exc)

    return lower


class Priority:
    """Requests before bulk work on the one event loop: while requests are being answered, the ingest agent pauses
    between slices of a batch -- a bounded wait per slice (``max_wait_s``), and waits that add up to at most
    ``max_share`` of each ``window_s``. Without the share a request always in flight (a flood, or a client keeping
    a few outstanding) let ingestion through one slice per wait: 50 events per 20 ms, 2,500 events/s, whatever the
    worker could do; with it ingestion pauses for at most ``max_share`` of the loop's time (the requests' own work
    comes on top: bench.request_flood kept 0.41-0.53 of the stream's pace alone at 0.5, against 0.14 unbounded)."""

    def __init__(self, max_wait_s: float = 0.02, max_share: float = 0.5, window_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0.0 <= max_share <= 1.0:
            raise ValueError(f"max_share must be within [0, 1], not {max_share}")
        self.max_wait_s = max_wait_s
        self.max_share = max_share
        self.window_s = window_s
        self.clock = clock
        self.busy = 0
        self.waited_s = 0.0  # waited in the current window
        self.window_started = -float("inf")
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.busy += 1
        self._idle.clear()

    def leave(self) -> None:
        self.busy -= 1
        if self.busy <= 0:
            self.busy = 0
            self._idle.set()

    def _budget_s(self, now: float) -> float:
        if now - self.window_started >= self.window_s:  # tumbling windows: a new one starts with its whole budget
            self.window_started, self.waited_s = now, 0.0
        return min(self.max_wait_s, self.max_share * self.window_s - self.waited_s)

    async def yield_to_requests(self) -> None:
        if self.busy:
            started = self.clock()
            budget = self._budget_s(started)
            if budget > 0:
                try:
                    await asyncio.wait_for(self._idle.wait(), timeout=budget)
                except asyncio.TimeoutError:
                    pass
                self.waited_s += self.clock() - started
                return
        await asyncio.sleep(0)  # no request, or their share of this window is spent: one turn of the loop

"""Requests before bulk work on a worker's one event loop (the recommender marks requests in flight, the ingest agent
yields between slices of a batch), and the LLM's thread below both on the CPU."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
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
    between slices of a batch (a bounded wait per slice, so a steady stream of requests slows ingestion without
    stopping it)."""

    def __init__(self, max_wait_s: float = 0.02) -> None:
        self.max_wait_s = max_wait_s
        self.busy = 0
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

    async def yield_to_requests(self) -> None:
        if self.busy:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=self.max_wait_s)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(0)

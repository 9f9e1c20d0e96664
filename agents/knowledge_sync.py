"""The knowledge sync: keeps the LanceDB knowledge store (RAG side) in step with this worker's partitions.

Every `knowledge_sync_interval_s`, each partition whose counts changed gets its rows prepared on the event loop --
from the partition state's own count index, for the pairs that changed (the day windows of every pair only on the
first sync of a new day, when every window moves; trends whole: a row per cluster), so a sync costs what changed,
not the size of the state -- and all of them are written in one
merge per table (`KnowledgeStore.write_many`) from ONE executor thread, so LanceDB's I/O never blocks the event loop and one store instance never writes from two threads. Workers
write only rows of their own partitions; readers sum over partitions. A failed write is retried at the next round
with the same hints (nothing is lost), counted, and shows in /health.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import faust

    from agents.health import Health
    from agents.state import StateTable
    from models.knowledge import KnowledgeStore
    from streams.metrics import Metrics

log = logging.getLogger(__name__)


class KnowledgeSync:
    def __init__(self, states: StateTable, open_store: Callable[[], KnowledgeStore], executor: Executor,
                 metrics: Metrics, health: Health, clock: Callable[[], float] = time.monotonic) -> None:
        self.states = states
        self.open_store = open_store
        self.executor = executor
        self.metrics = metrics
        self.health = health
        self.clock = clock
        self.store: KnowledgeStore | None = None
        self.failures = 0

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def sync(self) -> int:
        """One round: write every partition with changes; returns how many were written."""
        changed = [(p, s) for p, s in self.states.held().items() if s.changed_pairs or s.trends_changed]
        if not changed:
            return 0
        if self.store is None:
            try:
                self.store = await self._run(self.open_store)
            except Exception as exc:  # e.g. a commit conflict with another opener: the changes wait for the next round
                self._failed(f"opening the knowledge store: {type(exc).__name__}")
                log.exception("opening the knowledge store failed; will retry")
                return 0
        store = self.store
        started = self.clock()
        updates, hints = [], []
        for partition, state in changed:
            pairs, state.changed_pairs = state.changed_pairs, set()
            trends_changed, state.trends_changed = state.trends_changed, False
            updates.append(store.prepare(partition, state.counts, state.watermark, pairs))  # on the loop: a snapshot
            hints.append((state, pairs, trends_changed))
        written = 0
        try:
            await self._run(store.write_many, updates)  # one commit per table for the whole round
            written = len(updates)
        except Exception as exc:  # the next round sends the same changes again: nothing is lost
            for state, pairs, trends_changed in hints:
                state.changed_pairs |= pairs
                state.trends_changed |= trends_changed
            self._failed(f"knowledge sync of partitions {[p for p, _ in changed]}: {type(exc).__name__}")
            log.exception("knowledge sync of partitions %s failed; will retry", [p for p, _ in changed])
        self.metrics.knowledge_sync_seconds.observe(self.clock() - started)
        return written

    def _failed(self, what: str) -> None:
        self.failures += 1
        self.metrics.knowledge_sync_failures.inc()
        self.health.send_retried(what)

    def release(self, partitions: list[int]) -> None:
        # Another worker writes these partitions' rows from now on: our memory of what we wrote there is stale.
        if self.store is not None:
            for partition in partitions:
                self.store.release_partition(partition)


def attach(app: faust.App, sync: KnowledgeSync, interval_s: float) -> None:
    @app.timer(interval_s, name="knowledge_sync")
    async def sync_knowledge() -> None:
        await sync.sync()

"""The knowledge sync agent: keeps the LanceDB knowledge store (RAG side) in step with this worker's partitions.

Every `knowledge_sync_interval_s`, each partition whose state changed is read on the event loop (a consistent
snapshot: the agent mutates the state on the same loop) and written from ONE executor thread, so LanceDB's I/O
never blocks the event loop and one store instance never writes from two threads. Workers write only rows of their
own partitions; readers sum over partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from models.transitions import read_counts

if TYPE_CHECKING:
    import faust

    from agents.transitions import TransitionsRuntime
    from models.clusters import ClusterSet
    from streams.app import AppContext

log = logging.getLogger(__name__)


def register(app: "faust.App", context: "AppContext", clusters: "ClusterSet", runtime: "TransitionsRuntime") -> None:
    from models.knowledge import KnowledgeStore

    settings = context.settings
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knowledge-writer")
    store_holder: dict[str, KnowledgeStore] = {}
    interactions_topic = context.topics.interactions.get_topic_name()

    async def knowledge() -> KnowledgeStore:
        if "store" not in store_holder:
            loop = asyncio.get_running_loop()
            store = await loop.run_in_executor(executor, KnowledgeStore.from_settings, settings, clusters.version)
            await loop.run_in_executor(executor, store.upsert_clusters, clusters)
            store_holder["store"] = store
        return store_holder["store"]

    next_sync = {"at": 0.0}

    @app.timer(settings.knowledge_sync_interval_s)
    async def sync_knowledge() -> None:
        # Reading a partition's counts runs on the event loop; during a bulk catch-up that would crowd out
        # ingestion, so a sync that took d seconds waits at least d*(1-share)/share before the next (the share of
        # the loop is at most knowledge_sync_max_loop_share; steady-state syncs are short, so freshness holds).
        if time.monotonic() < next_sync["at"]:
            return
        changed = [(p, s) for p, s in list(runtime.stores.items()) if s.changed_since_sync]
        if not changed:
            return
        store = await knowledge()
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        for partition, partition_store in changed:
            partition_store.changed_since_sync = False
            pairs, partition_store.changed_pairs = partition_store.changed_pairs, set()
            counts = read_counts([partition_store])
            try:
                await loop.run_in_executor(executor, store.write_partition_counts, partition, counts,
                                           partition_store.latest_ts, pairs)
            except Exception:  # the next round sends the same changes again: nothing is lost
                partition_store.changed_since_sync = True
                partition_store.changed_pairs |= pairs
                log.exception("knowledge sync of partition %d failed; will retry", partition)
        elapsed = time.monotonic() - started
        share = settings.knowledge_sync_max_loop_share
        next_sync["at"] = time.monotonic() + elapsed * (1 - share) / share
        context.metrics.knowledge_sync_seconds.observe(elapsed)

    @app.on_partitions_revoked.connect
    async def forget_revoked(app: "faust.App", revoked, **kwargs) -> None:  # type: ignore[no-untyped-def]
        store = store_holder.get("store")
        for tp in revoked:
            # The partition's state stays with the transitions runtime (its TransitionState holds that store);
            # only the knowledge store's memory of what it wrote is stale once another worker writes the rows.
            if tp.topic == interactions_topic and store is not None:
                store.release_partition(tp.partition)

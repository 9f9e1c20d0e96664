"""The pair refresher: keeps the pair table in step with the streaming knowledge, one changed pair at a time.

Every `pair_refresh_interval_s` it scans the knowledge store once (all pairs' top next clusters) and compares each
pair's fingerprint (the top next cluster ids a prompt would show) with the fingerprint its current-model row was
inferred from. A pair whose fingerprint changed — or that has no row for the current model yet (first build, or a
model hot swap) — is re-inferred in the background on the LLM thread, the busiest pairs first; a pair is re-inferred
at most every `pair_refresh_min_interval_s`, so a hot pair cannot monopolise the LLM, and nothing is re-inferred
while the worker is more than `pair_refresh_max_lag` events behind (a catch-up: ingestion gets the CPU).

Scale-out without coordination: each pair belongs to one interactions partition (a stable hash of the pair), and a
worker refreshes only the pairs of the partitions Kafka assigned to it. Rows inferred on request-time misses are
written here too, so all LanceDB writes of the pair table come from this one loop; and at every scan the rows other
writers stored (other workers, `explorer pairs build`) are merged into this worker's in-memory table (newest row
wins, in memory as in LanceDB), so a pair refreshed anywhere serves everywhere. With `pair_refresh_enabled` off the
loop only stores and merges rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from models.pair_table import Pair, PairPrediction, all_pairs, fingerprint, infer, pair_owner
from models.prompts import MAX_TOP_NEXT, MAX_TRENDING

if TYPE_CHECKING:
    import faust

    from agents.recommender import Services
    from streams.app import AppContext

log = logging.getLogger(__name__)

WRITE_EVERY = 32  # rows per LanceDB upsert while a round is busy
# Rows other writers stored (other workers' refreshers, `explorer pairs build`) are merged in at every scan; rows
# updated this long before the last merge are read again, so writers' clocks may disagree by up to this much.
MERGE_SLACK_S = 60.0


def register(app: faust.App, context: AppContext, services: Services) -> None:
    settings = context.settings
    metrics = context.metrics
    interactions = context.topics.interactions.get_topic_name()
    # Each pair's owning partition never changes: hash once, not on every scan.
    owner = {pair: pair_owner(pair, settings.interactions_partitions) for pair in all_pairs(services.clusters)}
    first_seen: dict[Pair, float] = {}  # when a pair's current fingerprint was first seen without a matching row

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == interactions}

    def lag() -> float:
        # The ingest agent's per-partition lag gauge (updated every few seconds).
        return sum(child._value.get() for child in metrics.consumer_lag._metrics.values())

    def snapshot() -> tuple[dict[Pair, list[tuple[str, int]]], list[str], str]:
        knowledge = services.knowledge
        assert knowledge is not None
        knowledge.refresh()
        return (knowledge.all_top_next(n=MAX_TOP_NEXT + 2), [c for c, _, _ in knowledge.trending(n=MAX_TRENDING)],
                knowledge.knowledge_version())

    merged = {"since": time.time() - MERGE_SLACK_S}  # the worker loaded the whole table when it started

    async def merge_other_writers() -> None:
        # Each worker refreshes only the pairs of its partitions, but its users may have any pair: rows written
        # elsewhere must reach this worker's in-memory table, and they also spare it re-inferring those pairs.
        if services.pairs is None:
            return
        since, merged["since"] = merged["since"], time.time() - MERGE_SLACK_S
        try:
            services.cache.merge(await services.io(services.pairs.load, None, since))
        except Exception:
            merged["since"] = since
            log.exception("reading pair-table rows of other writers failed; retrying next round")

    async def flush() -> None:
        rows, services.pending_rows = services.pending_rows, []
        if rows and services.pairs is not None:
            try:
                await services.io(services.pairs.upsert, rows)
            except Exception:  # the rows stay in memory and serve; the next flush retries them
                services.pending_rows[:0] = rows
                log.exception("writing %d pair-table rows failed; will retry", len(rows))

    def due(owned: set[int], knowledge: dict[Pair, list[tuple[str, int]]], now: float) -> list[Pair]:
        todo: list[tuple[int, Pair]] = []
        for pair, partition in owner.items():
            if partition not in owned:
                continue
            wanted = fingerprint(knowledge.get(pair, []), pair)
            row = services.cache.current(pair)
            if row is not None and row.fingerprint == wanted:
                first_seen.pop(pair, None)
                continue
            first_seen.setdefault(pair, now)
            if row is not None and now - row.updated_at < settings.pair_refresh_min_interval_s:
                continue
            todo.append((sum(n for _, n in knowledge.get(pair, [])), pair))
        todo.sort(key=lambda item: (-item[0], item[1]))
        return [pair for _, pair in todo]

    @app.task
    async def refresh_pairs() -> None:
        await services.ready.wait()
        if services.predictor is None or not settings.pair_refresh_enabled:
            if services.predictor is None:
                log.warning("pair refresher idle: no LLM (%s)", services.llm_error)
            while True:  # no re-inference here, yet rows from misses are stored and other writers' rows served
                await asyncio.sleep(settings.pair_refresh_interval_s)
                await flush()
                await merge_other_writers()
                metrics.pair_table_rows.set(services.cache.size())
        todo: list[Pair] = []
        scanned_at = 0.0
        while True:
            if not todo or time.monotonic() - scanned_at >= settings.pair_refresh_interval_s:
                if not todo:  # nothing left to do: wait for the next scan instead of spinning
                    await asyncio.sleep(max(0.0, scanned_at + settings.pair_refresh_interval_s - time.monotonic()))
                await flush()
                await merge_other_writers()
                metrics.pair_table_rows.set(services.cache.size())
                owned = owned_partitions()
                scanned_at = time.monotonic()
                if lag() > settings.pair_refresh_max_lag:  # catching up: requests still get the LLM on a miss
                    todo = []
                    continue
                try:
                    knowledge, trending, version = await services.io(snapshot)
                except Exception:
                    log.exception("reading the knowledge for the pair refresh failed; retrying next round")
                    todo = []
                    continue
                # A fresh list every interval: a pair that just changed jumps ahead of the backlog at once.
                todo = due(owned, knowledge, time.time()) if owned else []
                continue
            await services.llm_free_for_refresh.wait()  # request-time misses first
            pair = todo.pop(0)
            row: PairPrediction = await services.llm(infer, services.predictor, pair, knowledge.get(pair, []),
                                                     trending, version)
            had_row = services.cache.current(pair) is not None
            services.cache.put(row)
            services.pending_rows.append(row)
            metrics.pair_inferences.labels("changed" if had_row else "missing").inc()
            seen = first_seen.pop(pair, None)
            if seen is not None and had_row:
                metrics.pair_refresh_lag.observe(time.time() - seen)
            if len(services.pending_rows) >= WRITE_EVERY:
                await flush()

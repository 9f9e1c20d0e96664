"""The pair refresher: keeps the pair table in step with the streaming knowledge, one changed pair at a time.

Every `pair_refresh_interval_s` it scans the knowledge store once (all pairs' top next clusters) and compares each
pair's fingerprint (the top next cluster ids a prompt would show) with the fingerprint its current-model row was
inferred from. A pair whose fingerprint changed -- or that has no row for the current model yet (first build, or a
model hot swap) -- is re-inferred in the background on the LLM thread, the busiest pairs first; a pair is re-inferred
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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from models.pair_table import Pair, PairPrediction, all_pairs, fingerprint, infer, pair_owner
from models.prompts import MAX_TOP_NEXT, MAX_TRENDING

if TYPE_CHECKING:
    import faust

    from agents.serving import Serving
    from models.model_loading import ModelLoader
    from streams.metrics import Metrics
    from streams.settings import Settings

log = logging.getLogger(__name__)

WRITE_EVERY = 32  # rows per LanceDB upsert while a round is busy
# Rows other writers stored (other workers' refreshers, `explorer pairs build`) are merged in at every scan; rows
# updated this long before the last merge are read again, so writers' clocks may disagree by up to this much.
MERGE_SLACK_S = 60.0

Knowledge = dict[Pair, list[tuple[str, int]]]


class PairRefresher:
    def __init__(self, settings: Settings, serving: Serving, metrics: Metrics, owned: Callable[[], set[int]],
                 lag: Callable[[], float], clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.serving = serving
        self.metrics = metrics
        self.owned = owned
        self.lag = lag
        self.clock = clock
        # Each pair's owning partition never changes: hash once, not on every scan.
        self.owner = {pair: pair_owner(pair, settings.interactions_partitions) for pair in all_pairs(serving.clusters)}
        self.first_seen: dict[Pair, float] = {}  # when a pair's current fingerprint was first seen without its row
        self.merged_since = clock() - MERGE_SLACK_S  # the worker loaded the whole table when it started

    def _snapshot(self) -> tuple[Knowledge, list[str], str]:
        knowledge = self.serving.knowledge
        assert knowledge is not None
        knowledge.refresh()
        return (knowledge.all_top_next(n=MAX_TOP_NEXT + 2), [c for c, _, _ in knowledge.trending(n=MAX_TRENDING)],
                knowledge.knowledge_version())

    async def merge_other_writers(self) -> None:
        # Each worker refreshes only the pairs of its partitions, but its users may have any pair: rows written
        # elsewhere must reach this worker's in-memory table, and they also spare it re-inferring those pairs.
        serving = self.serving
        if serving.pairs is None:
            return
        since, self.merged_since = self.merged_since, self.clock() - MERGE_SLACK_S
        try:
            serving.cache.merge(await serving.io(serving.pairs.load, None, since))
        except Exception:
            self.merged_since = since
            log.exception("reading pair-table rows of other writers failed; retrying next round")

    async def flush(self) -> None:
        serving = self.serving
        rows, serving.pending_rows = serving.pending_rows, []
        if rows and serving.pairs is not None:
            try:
                await serving.io(serving.pairs.upsert, rows)
            except Exception:  # the rows stay in memory and serve; the next flush retries them
                serving.pending_rows[:0] = rows
                log.exception("writing %d pair-table rows failed; will retry", len(rows))

    def due(self, owned: set[int], knowledge: Knowledge, now: float) -> list[Pair]:
        """The pairs of `owned` partitions whose current-model row is missing or stale, busiest first."""
        todo: list[tuple[int, Pair]] = []
        cache = self.serving.cache
        for pair, partition in self.owner.items():
            if partition not in owned:
                continue
            wanted = fingerprint(knowledge.get(pair, []), pair)
            row = cache.current(pair)
            # a row of the other kind (scored vs one answer, after a `novel_choice` change) is stale too
            if row is not None and row.fingerprint == wanted and bool(row.scores) == self.settings.scored_pairs:
                self.first_seen.pop(pair, None)
                continue
            self.first_seen.setdefault(pair, now)
            if row is not None and now - row.updated_at < self.settings.pair_refresh_min_interval_s:
                continue
            todo.append((sum(n for _, n in knowledge.get(pair, [])), pair))
        todo.sort(key=lambda item: (-item[0], item[1]))
        return [pair for _, pair in todo]

    async def _upkeep(self) -> None:
        await self.flush()
        await self.merge_other_writers()
        self.metrics.pair_table_rows.set(self.serving.cache.size())

    async def run(self) -> None:
        serving, settings = self.serving, self.settings
        await serving.ready.wait()
        if serving.predictor is None or not settings.pair_refresh_enabled:
            if serving.predictor is None:
                log.warning("pair refresher idle: no LLM (%s)", serving.llm_error)
            while True:  # no re-inference here, yet rows from misses are stored and other writers' rows served
                await asyncio.sleep(settings.pair_refresh_interval_s)
                await self._upkeep()
        todo: list[Pair] = []
        knowledge: Knowledge = {}
        trending: list[str] = []
        version = ""
        scanned_at = 0.0
        while True:
            if not todo or time.monotonic() - scanned_at >= settings.pair_refresh_interval_s:
                if not todo:  # nothing left to do: wait for the next scan instead of spinning
                    await asyncio.sleep(max(0.0, scanned_at + settings.pair_refresh_interval_s - time.monotonic()))
                await self._upkeep()
                owned = self.owned()
                scanned_at = time.monotonic()
                if self.lag() > settings.pair_refresh_max_lag:  # catching up: requests still get the LLM on a miss
                    todo = []
                    continue
                try:
                    knowledge, trending, version = await serving.io(self._snapshot)
                except Exception:
                    log.exception("reading the knowledge for the pair refresh failed; retrying next round")
                    todo = []
                    continue
                # A fresh list every interval: a pair that just changed jumps ahead of the backlog at once.
                todo = self.due(owned, knowledge, self.clock()) if owned else []
                continue
            await serving.llm_free_for_refresh.wait()  # request-time misses first
            predictor = serving.predictor
            if predictor is None:
                todo = []
                continue
            pair = todo.pop(0)
            row: PairPrediction = await serving.llm(infer, predictor, pair, knowledge.get(pair, []), trending,
                                                    version, time.time, settings.scored_pairs)
            if row.model_version != serving.cache.current_version:
                continue  # a swap happened while it ran: the row still serves as the old model's, not as current
            had_row = serving.cache.current(pair) is not None
            serving.cache.put(row)
            serving.pending_rows.append(row)
            self.metrics.pair_inferences.labels("changed" if had_row else "missing").inc()
            seen = self.first_seen.pop(pair, None)
            if seen is not None and had_row:
                self.metrics.pair_refresh_lag.observe(self.clock() - seen)
            if len(serving.pending_rows) >= WRITE_EVERY:
                await self.flush()


class ModelWatcher:
    """Hot swap: a newly released model (models/finetune/registry.py) is found and loaded beside the serving one on
    the loader's own thread (models/model_loading.py: reads and grounding go on meanwhile), then swapped in between
    two LLM calls. What is released is decided by identity (version + full digest), not by path, so A -> B ->
    rollback to A swaps each time. Pair rows of the old model keep serving until the refresher has re-inferred them
    for the new one; answered requests stay answered."""

    def __init__(self, serving: Serving, loader: ModelLoader, metrics: Metrics) -> None:
        self.serving = serving
        self.loader = loader
        self.metrics = metrics

    async def check(self) -> bool:
        serving = self.serving
        if not serving.ready.is_set() or serving.predictor is None:
            return False
        try:
            release = await asyncio.wrap_future(self.loader.submit_check(serving.predictor.identity))
        except Exception:
            log.exception("checking the registry for a released LLM failed; the current one keeps serving")
            return False
        if release is None:
            return False
        log.info("a new LLM was released: %s (%s); loading it beside the serving one", release.path,
                 release.identity.label)
        try:
            fresh = await asyncio.wrap_future(self.loader.submit_load(release))
        except Exception:
            log.exception("the released model %s could not be loaded; the current one keeps serving", release.path)
            return False
        old = serving.predictor
        serving.predictor = fresh
        serving.cache.current_version = fresh.model_version
        self.metrics.pair_table_rows.set(serving.cache.size())
        await serving.llm(old.close)  # queued after any call still using it
        log.info("now serving LLM %s", fresh.model_version)
        return True


def attach(app: faust.App, refresher: PairRefresher, watcher: ModelWatcher, serving: Serving,
           watch_interval_s: float, *before_serving: Callable[[], Any]) -> None:
    @app.task
    async def load_serving() -> None:
        await serving.start(*before_serving)

    @app.task
    async def refresh_pairs() -> None:
        await refresher.run()

    @app.timer(watch_interval_s)
    async def watch_model() -> None:
        await watcher.check()

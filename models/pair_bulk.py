"""Bulk build of the pair table: every (c1, c2) pair's novel cluster from the LLM, against the current knowledge.

Pairs are independent, so the build scales with processes: each one loads its own llama.cpp model (one context is
single-threaded per call, and a process per core beats threads inside one context on a small model) and takes
chunks of pairs from a queue; the parent writes each finished chunk to LanceDB (keyed upserts, so a build that is
stopped part way can simply be run again). A chunk holds pairs of one first cluster, so the worker evaluates that
cluster's prompt line once per chunk (models/llm.py's request-head checkpoint) and then only each pair's rest.

Which pairs go first: the busiest (most transitions seen), so a partial build already serves most requests.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING

from models.pair_table import Pair, PairPrediction, PairTable, all_pairs, infer
from models.prompts import MAX_TOP_NEXT, MAX_TRENDING

if TYPE_CHECKING:
    from models.clusters import ClusterSet
    from models.knowledge import KnowledgeStore
    from models.llm import NovelClusterPredictor
    from streams.settings import Settings

CHUNK_PAIRS = 13  # a third of a 40-cluster group: small enough to balance the processes and show progress

TopNext = list[tuple[str, int]]


@dataclass(frozen=True)
class BulkReport:
    pairs: int
    with_knowledge: int
    seconds: float
    mean_inference_ms: float
    processes: int = 1

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


def bulk_order(clusters: ClusterSet, knowledge: Mapping[Pair, Sequence[tuple[str, int]]]) -> list[Pair]:
    """Every pair, the busiest (most transitions seen) first: a partial build already serves most requests."""
    weight = {pair: sum(n for _, n in rows) for pair, rows in knowledge.items()}
    return sorted(all_pairs(clusters), key=lambda pair: (-weight.get(pair, 0), pair))


def chunks_by_first_cluster(pairs: Sequence[Pair], size: int = CHUNK_PAIRS) -> list[list[Pair]]:
    """`pairs` cut into chunks of at most `size` pairs that share their first cluster. Groups come in the order
    of their first pair in `pairs` (so the busiest go first), pairs keep their order inside a group."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair[0], []).append(pair)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def default_processes(threads: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, threads))


def build(predictor: NovelClusterPredictor | None, store: KnowledgeStore, table: PairTable, clusters: ClusterSet,
          pairs: Sequence[Pair] | None = None, on_progress: Callable[[int], None] | None = None, *,
          processes: int = 1, settings: Settings | None = None, model_path: str | None = None,
          threads: int = 1, scored: bool = False) -> BulkReport:
    """Infer and store `pairs` (default: every ordered pair of distinct clusters) against the current knowledge.

    With `processes` 1 the given `predictor` does the work in this process; with more, each process loads
    `model_path` (with `settings`, `threads` llama.cpp threads each) and `predictor` may be None. `scored`: rows
    keep the model's whole distribution (models/pair_table.infer; ``Settings.scored_pairs``)."""
    store.refresh()
    knowledge = store.all_top_next(n=MAX_TOP_NEXT + 2)  # +2: the pair's own clusters may be among them
    trending = [cid for cid, _, _ in store.trending(n=MAX_TRENDING)]
    version = store.knowledge_version()
    todo = list(pairs) if pairs is not None else bulk_order(clusters, knowledge)
    chunks = [[(pair, list(knowledge.get(pair, []))) for pair in chunk] for chunk in chunks_by_first_cluster(todo)]
    started = time.perf_counter()
    inference_ms = 0.0

    def store_chunk(predictions: list[PairPrediction]) -> None:
        nonlocal inference_ms
        inference_ms += sum(p.inference_ms for p in predictions)
        table.upsert(predictions)
        if on_progress:
            on_progress(len(predictions))

    if processes <= 1:
        if predictor is None:
            raise ValueError("a single-process build needs a predictor")
        for chunk in chunks:
            store_chunk(_infer_chunk_with(predictor, chunk, trending, version, scored))
    else:
        if settings is None or model_path is None:
            raise ValueError("a multi-process build needs the settings and the model path")
        _build_in_processes(chunks, trending, version, store_chunk, processes, settings, clusters, model_path,
                            threads, scored)
    table.compact()
    return BulkReport(pairs=len(todo), with_knowledge=sum(1 for p in todo if p in knowledge),
                      seconds=time.perf_counter() - started, mean_inference_ms=inference_ms / max(1, len(todo)),
                      processes=max(1, processes))


def _build_in_processes(chunks: list[list[tuple[Pair, TopNext]]], trending: list[str], version: str,
                        store_chunk: Callable[[list[PairPrediction]], None], processes: int, settings: Settings,
                        clusters: ClusterSet, model_path: str, threads: int, scored: bool) -> None:
    # spawn, not fork: the parent may hold LanceDB/Arrow threads, which a forked child would inherit half-alive
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_start_worker,
                             initargs=(settings, clusters, model_path, threads)) as pool:
        pending: set[Future[list[PairPrediction]]] = set()
        queue = iter(chunks)
        try:
            # at most two chunks in flight per process: the order (busiest first) holds, and Ctrl-C stops soon
            for chunk in queue:
                pending.add(pool.submit(_infer_chunk, chunk, trending, version, scored))
                if len(pending) >= 2 * processes:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        store_chunk(future.result())
            for future in pending:
                store_chunk(future.result())
        except BrokenProcessPool as exc:  # a worker died (out of memory, a model that fails to load, a crash)
            raise RuntimeError(f"a bulk-build worker process died ({exc}); the pairs stored so far are kept, run "
                               "the build again to finish (try fewer --processes if memory is short)") from exc
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


_WORKER: NovelClusterPredictor | None = None


def _start_worker(settings: Settings, clusters: ClusterSet, model_path: str, threads: int) -> None:
    from models.llm import NovelClusterPredictor

    global _WORKER
    _WORKER = NovelClusterPredictor(settings, clusters, model_path=model_path, n_threads=threads)


def _infer_chunk(chunk: list[tuple[Pair, TopNext]], trending: list[str], version: str, scored: bool
                 ) -> list[PairPrediction]:
    if _WORKER is None:
        raise RuntimeError("the bulk worker process has no model loaded")
    return _infer_chunk_with(_WORKER, chunk, trending, version, scored)


def _infer_chunk_with(predictor: NovelClusterPredictor, chunk: list[tuple[Pair, TopNext]], trending: list[str],
                      version: str, scored: bool) -> list[PairPrediction]:
    return [infer(predictor, pair, top_next, trending, version, scored=scored) for pair, top_next in chunk]

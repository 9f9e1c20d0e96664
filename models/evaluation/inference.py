"""Every LLM inference the evaluation needs, run in bulk: deduplicated by exact prompt, cached across runs, spread
over processes.

* **Key** -- (kind and decoding method, the model's opaque identity `models.llm.model_version`, the clusters
  version, the exact prompt text). Decoding is deterministic, so an identical key gives the identical answer; the
  strategy that asked is not part of it, so strategies share inferences and a rerun with a changed strategy
  re-infers only the prompts that changed.
* **Cache** -- a SQLite file (`InferenceCache`), written chunk by chunk as results come in, so a stopped run keeps
  what it paid for. Each row keeps the CPU and wall seconds of its first, real inference: a strategy is charged
  those whether its answer came from the memo, the cache or a fresh call.
* **Processes** -- as the bulk pair-table build does (models/pair_bulk.py): spawned worker processes with their own
  llama.cpp models take chunks of pairs that share the model, the trending clusters and the first cluster, so
  the request head's KV checkpoint is reused inside a chunk (models/llm.py); results do not depend on the chunking.

Kinds: ``novel`` -- the constrained novel-cluster answer (`NovelClusterPredictor.predict`, result
``{"cluster": id}``); ``scores`` -- every novel cluster's exact log-probability off one KV state
(`NovelClusterPredictor.candidate_log_probs(exact=True)`, result ``{"scores": {id: log p}}``): the model's whole
distribution; ``served-scores`` -- the same over each name's distinguishing prefix, as a scored pair-table row
holds it (the default of `candidate_log_probs`, ~3x cheaper).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from models.clusters import ClusterSet
from models.evaluation.interface import InferenceRequest, Inferred
from models.pair_bulk import chunks_by_first_cluster
from models.prompts import Knowledge, build_prompt

Pair = tuple[str, str]
# (key, kind, model path, pair, top_next or None, trending)
Job = tuple[str, str, str, Pair, tuple[tuple[str, int], ...] | None, tuple[str, ...]]
JobResult = tuple[str, dict[str, Any], float, float]  # (key, result, cpu_s, wall_s)


def _novel(predictor: Any, pair: Pair, knowledge: Knowledge | None) -> dict[str, Any]:
    return {"cluster": predictor.predict(pair, knowledge).cluster_id}


def _scores(predictor: Any, pair: Pair, knowledge: Knowledge | None) -> dict[str, Any]:
    return {"scores": predictor.candidate_log_probs(pair, knowledge, exact=True)}


def _served_scores(predictor: Any, pair: Pair, knowledge: Knowledge | None) -> dict[str, Any]:
    return {"scores": predictor.candidate_log_probs(pair, knowledge)}


SERVED_SCORES = "served-scores"  # what a scored pair-table row holds (models/pair_table.infer with scored=True)
KINDS: dict[str, Callable[[Any, Pair, Knowledge | None], dict[str, Any]]] = {
    "novel": _novel, "scores": _scores, SERVED_SCORES: _served_scores}


class InferenceCache:
    """key -> (result, cpu_s, wall_s) in SQLite; `path` None keeps it in memory (tests, `--no-cache`)."""

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:", check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS inferences (key TEXT PRIMARY KEY, result TEXT NOT NULL, "
                             "cpu_s REAL NOT NULL, wall_s REAL NOT NULL, meta TEXT NOT NULL, created REAL NOT NULL)")

    def get_many(self, keys: Iterable[str]) -> dict[str, Inferred]:
        found: dict[str, Inferred] = {}
        keys = list(keys)
        with self._lock:
            for start in range(0, len(keys), 500):
                part = keys[start:start + 500]
                rows = self._db.execute(f"SELECT key, result, cpu_s, wall_s FROM inferences WHERE key IN "
                                        f"({','.join('?' * len(part))})", part).fetchall()
                for key, result, cpu_s, wall_s in rows:
                    found[key] = Inferred(orjson.loads(result), cpu_s, wall_s, cached=True)
        return found

    def put_many(self, rows: Iterable[tuple[str, Inferred, Mapping[str, Any]]]) -> None:
        now = time.time()
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO inferences VALUES (?, ?, ?, ?, ?, ?)",
                                 [(key, orjson.dumps(dict(i.result)).decode(), i.cpu_s, i.wall_s,
                                   orjson.dumps(dict(meta)).decode(), now) for key, i, meta in rows])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM inferences").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class EngineStats:
    requested: int = 0  # requests made by every strategy at every state
    unique: int = 0  # distinct keys among them (the exact-prompt memo)
    cached: int = 0  # of those, found in the cache
    inferred: int = 0  # of those, run now
    cpu_s: float = 0.0  # CPU of the inferences run now
    wall_s: float = 0.0  # wall time of the runs (processes together)
    cpu_per_inference: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        values = sorted(self.cpu_per_inference or [])
        return {"requested": self.requested, "unique": self.unique, "cached": self.cached,
                "inferred": self.inferred, "cpu_s": round(self.cpu_s, 1), "wall_s": round(self.wall_s, 1),
                "cpu_s_per_inference_p50": round(values[len(values) // 2], 3) if values else None}


class InferenceEngine:
    """Runs `InferenceRequest`s: memo, then cache, then `processes` worker processes (0: in this process)."""

    def __init__(self, settings: Any, clusters: ClusterSet, cache: InferenceCache, processes: int, threads: int = 1,
                 method: str = "trie", chunk_pairs: int = 13) -> None:
        self.settings, self.clusters, self.cache = settings, clusters, cache
        self.processes, self.threads, self.method, self.chunk_pairs = processes, threads, method, chunk_pairs
        self.stats = EngineStats(cpu_per_inference=[])
        self._memo: dict[str, Inferred] = {}
        self._keys: dict[InferenceRequest, str] = {}

    def key(self, request: InferenceRequest) -> str:
        key = self._keys.get(request)
        if key is None:
            prompt = build_prompt(request.pair, request.knowledge, self.clusters)
            key = self._keys[request] = InferenceRequest.key(
                _with_kind(request, f"{request.kind}:{self.method}"), self.clusters.version, prompt)
        return key

    def run(self, requests: Sequence[InferenceRequest], on_progress: Callable[[int], None] | None = None,
            stop: threading.Event | None = None, processes: int | None = None) -> dict[InferenceRequest, Inferred]:
        """Results of `requests` (all of them; with `stop` set part way, those done by then)."""
        keys = {request: self.key(request) for request in requests}
        todo = {key: request for request, key in keys.items() if key not in self._memo}
        if todo:
            found = self.cache.get_many(todo)
            self._memo.update(found)
            self.stats.cached += len(found)
            missing = {key: todo[key] for key in todo if key not in found}
            if missing:
                self._infer(missing, on_progress, stop, self.processes if processes is None else processes)
        return {request: self._memo[key] for request, key in keys.items() if key in self._memo}

    def count(self, requests: Sequence[InferenceRequest]) -> None:
        """Account the requests of a finished plan (how many were asked, how many distinct)."""
        self.stats.requested += len(requests)
        self.stats.unique += len({self.key(r) for r in requests})

    # ---------------------------------------------------------------------------------------------- running
    def _jobs(self, missing: Mapping[str, InferenceRequest]) -> list[list[Job]]:
        groups: dict[tuple[str, str, tuple[str, ...], bool], list[tuple[str, InferenceRequest]]] = {}
        for key, request in sorted(missing.items(), key=lambda kv: (kv[1].model_path, kv[1].pair, kv[0])):
            group = (request.model_path, request.kind, request.trending, request.top_next is None)
            groups.setdefault(group, []).append((key, request))
        chunks: list[list[Job]] = []
        for members in groups.values():
            by_pair: dict[Pair, list[tuple[str, InferenceRequest]]] = {}
            for key, request in members:
                by_pair.setdefault(request.pair, []).append((key, request))
            for pairs in chunks_by_first_cluster(list(by_pair), self.chunk_pairs):
                chunks.append([(key, r.kind, r.model_path, r.pair, r.top_next, r.trending)
                               for pair in pairs for key, r in by_pair[pair]])
        return chunks

    def _infer(self, missing: Mapping[str, InferenceRequest], on_progress: Callable[[int], None] | None,
               stop: threading.Event | None, processes: int) -> None:
        chunks = self._jobs(missing)
        started = time.perf_counter()

        def store(results: list[JobResult]) -> None:
            rows = []
            for key, result, cpu_s, wall_s in results:
                inferred = Inferred(result, cpu_s, wall_s)
                self._memo[key] = inferred
                request = missing[key]
                rows.append((key, inferred, {"model_version": request.model_version, "pair": list(request.pair)}))
                self.stats.inferred += 1
                self.stats.cpu_s += cpu_s
                assert self.stats.cpu_per_inference is not None
                self.stats.cpu_per_inference.append(cpu_s)
            self.cache.put_many(rows)
            if on_progress:
                on_progress(len(results))

        try:
            if processes <= 0:
                _start_worker(self.settings, self.clusters, self.threads, self.method)
                for chunk in chunks:
                    if stop is not None and stop.is_set():
                        break
                    store(_run_chunk(chunk))
            else:
                self._in_processes(chunks, store, stop, processes)
        finally:
            self.stats.wall_s += time.perf_counter() - started

    def _in_processes(self, chunks: list[list[Job]], store: Callable[[list[JobResult]], None],
                      stop: threading.Event | None, processes: int) -> None:
        # spawn, not fork: the parent holds LanceDB/Arrow and torch threads a forked child would inherit half-alive
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_start_worker,
                                 initargs=(self.settings, self.clusters, self.threads, self.method)) as pool:
            pending: set[Future[list[JobResult]]] = set()
            try:
                for chunk in chunks:  # at most two chunks in flight per process: `stop` takes effect soon
                    if stop is not None and stop.is_set():
                        break
                    pending.add(pool.submit(_run_chunk, chunk))
                    if len(pending) >= 2 * processes:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            store(future.result())
                for future in pending:
                    store(future.result())
            except BrokenProcessPool as exc:
                raise RuntimeError(f"an inference worker process died ({exc}); the inferences done so far are in "
                                   "the cache, run the evaluation again to go on") from exc
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise


def _with_kind(request: InferenceRequest, kind: str) -> InferenceRequest:
    return InferenceRequest(kind, request.model_path, request.model_version, request.pair, request.top_next,
                            request.trending)


# ---------------------------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}
LOADED_MODELS = 2  # the base stays loaded beside the current fine-tune


def load_predictor(settings: Any, clusters: ClusterSet, path: str, threads: int, method: str) -> Any:
    """The predictor a worker answers with (a module-level function, so tests can put a fake in its place)."""
    from models.llm import NovelClusterPredictor

    return NovelClusterPredictor(settings, clusters, model_path=path, method=method, n_threads=threads,
                                 announce_base=False)  # the evaluation asks the base model on purpose


def _start_worker(settings: Any, clusters: ClusterSet, threads: int, method: str) -> None:
    _WORKER.clear()
    _WORKER.update(settings=settings, clusters=clusters, threads=threads, method=method, loaded={})


def _predictor(path: str) -> Any:
    loaded: dict[str, Any] = _WORKER["loaded"]
    if path not in loaded:
        while len(loaded) >= LOADED_MODELS:
            oldest = next(iter(loaded))
            closing = loaded.pop(oldest)
            if hasattr(closing, "close"):
                closing.close()
        loaded[path] = load_predictor(_WORKER["settings"], _WORKER["clusters"], path, _WORKER["threads"],
                                      _WORKER["method"])
    else:
        loaded[path] = loaded.pop(path)  # most recently used last
    return loaded[path]


def _run_chunk(chunk: list[Job]) -> list[JobResult]:
    if not _WORKER:
        raise RuntimeError("the inference worker was not started")
    out: list[JobResult] = []
    for key, kind, path, pair, top_next, trending in chunk:
        predictor = _predictor(path)
        knowledge = None if top_next is None else Knowledge(top_next=list(top_next), trending=list(trending))
        cpu, wall = time.process_time(), time.perf_counter()
        result = KINDS[kind](predictor, pair, knowledge)
        out.append((key, result, time.process_time() - cpu, time.perf_counter() - wall))
    return out

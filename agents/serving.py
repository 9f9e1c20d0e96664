"""The models and stores the recommender, the pair refresher and the model watcher share, loaded off the event loop.

Threads: LanceDB reads and the sequence model's grounding of answers without the LLM's distribution run on one I/O
thread (the one SASRec pass of an answer with it -- every table hit -- runs on the event loop: agents/recommender.py);
the LLM on its own thread (one llama.cpp context is not thread-safe; the pair refresher shares it). Request-time LLM
misses come before background pair refreshes on the LLM thread: the refresher waits while any request waits for, or uses, the LLM. A hot swap finds and loads the new
model on the model loader's own thread (models/model_loading.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from agents.priority import lower_thread_priority
from models.pair_table import Pair, PairPrediction
from models.prompts import MAX_TOP_NEXT, MAX_TRENDING
from models.recommend import NO_MODEL, ClusterMass, members_by_cluster

if TYPE_CHECKING:
    from models.clusters import ClusterSet
    from models.knowledge import KnowledgeStore
    from models.llm import NovelClusterPredictor
    from models.pair_table import PairTable
    from models.sequence import SequenceRecommender
    from streams.metrics import Metrics
    from streams.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class PairCache:
    """The pair table in memory: rows by model version; the current model's row wins, an older model's serves
    until the current one has answered the pair (hot swap)."""

    def __init__(self) -> None:
        self.current_version: str | None = None
        self.rows: dict[str, dict[Pair, PairPrediction]] = {}

    def lookup(self, pair: Pair) -> PairPrediction | None:
        if self.current_version is not None:
            row = self.rows.get(self.current_version, {}).get(pair)
            if row is not None:
                return row
        older = [rows[pair] for rows in self.rows.values() if pair in rows]
        return max(older, key=lambda row: row.updated_at) if older else None

    def current(self, pair: Pair) -> PairPrediction | None:
        return self.rows.get(self.current_version or "", {}).get(pair)

    def put(self, row: PairPrediction) -> None:
        rows = self.rows.setdefault(row.model_version, {})
        known = rows.get(row.pair)
        if known is None or known.updated_at <= row.updated_at:
            rows[row.pair] = row

    def merge(self, loaded: dict[str, dict[Pair, PairPrediction]]) -> None:
        for rows in loaded.values():
            for row in rows.values():
                self.put(row)

    def size(self) -> int:
        return len(self.rows.get(self.current_version or "", {}))


@dataclass
class Loaders:
    """How each model and store is opened (the composition root passes the real ones; tests pass fakes)."""

    knowledge: Callable[[], KnowledgeStore]
    pairs: Callable[[], PairTable]
    sequence: Callable[[], SequenceRecommender]
    predictor: Callable[[str], NovelClusterPredictor]
    current_model_path: Callable[[], str]


@dataclass
class Serving:
    settings: Settings
    clusters: ClusterSet
    loaders: Loaders
    metrics: Metrics
    cache: PairCache = field(default_factory=PairCache)
    predictor: NovelClusterPredictor | None = None
    sequence: SequenceRecommender | None = None
    mass: ClusterMass | None = None  # the sequence model's item -> cluster map, for "llm-x-sequence"
    knowledge: KnowledgeStore | None = None
    pairs: PairTable | None = None
    pending_rows: list[PairPrediction] = field(default_factory=list)  # inferred on a miss, written by the refresher
    llm_error: str | None = None
    members: dict[str, list[str]] = field(default_factory=dict)
    # One thread each unless injected: LanceDB reads and the sequence model; the LLM (its context is not thread-safe)
    io_executor: Executor | None = None
    llm_executor: Executor | None = None

    def __post_init__(self) -> None:
        if self.io_executor is None:
            self.io_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recommender-io")
        if self.llm_executor is None:  # below ingestion and table hits on the CPU (agents/priority.py)
            self.llm_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm",
                                                   initializer=lower_thread_priority(self.settings.llm_nice))
        self.requests_waiting_for_llm = 0
        self.llm_free_for_refresh = asyncio.Event()
        self.llm_free_for_refresh.set()
        self.members = dict(members_by_cluster(self.clusters))
        self.ready = asyncio.Event()

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io_executor, fn, *args)

    async def llm(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.llm_executor, fn, *args)

    async def llm_for_request(self, fn: Callable[..., T], *args: Any) -> T:
        """`llm`, ahead of the background refresher (which waits while any request needs the LLM).

        The LLM counts as taken until the CALL ends, not until the request stops waiting: a request-time timeout
        (asyncio.wait_for around this) cancels only the wait, a call already running on the LLM thread runs to its
        end, and the refresher is not let in meanwhile. So the release is a done-callback of the executor's own
        future -- fired when the call finishes, or at once when a still-queued call is cancelled by the timeout."""
        self.requests_waiting_for_llm += 1
        self.llm_free_for_refresh.clear()
        loop = asyncio.get_running_loop()
        call = self.llm_executor.submit(fn, *args)
        call.add_done_callback(lambda _: loop.is_closed() or loop.call_soon_threadsafe(self._request_left_llm))
        return await asyncio.wrap_future(call)

    def _request_left_llm(self) -> None:
        self.requests_waiting_for_llm -= 1
        if self.requests_waiting_for_llm == 0:
            self.llm_free_for_refresh.set()

    async def start(self, *first: Callable[[], Any]) -> None:
        """Load the stores and models (after awaiting each of `first`, e.g. starting the answers' producer)."""
        from models.sequence import SequenceModelNotTrained

        for step in first:
            await step()

        self.knowledge = await self.io(self.loaders.knowledge)
        self.pairs = await self.io(self.loaders.pairs)
        self.cache.merge(await self.io(self.pairs.load))
        try:
            self.sequence = await self.io(self.loaders.sequence)
            self.mass = ClusterMass(self.sequence, self.clusters) if self.sequence is not None else None
        except SequenceModelNotTrained as exc:
            log.warning("%s; recommendations rank the cluster's items in catalogue order", exc)
        try:
            path = await self.io(self.loaders.current_model_path)
            self.predictor = await self.llm(self.loaders.predictor, path)
            self.cache.current_version = self.predictor.model_version
        except Exception as exc:  # a missing or broken model: serve from the table and the fallback, say why
            self.llm_error = f"{type(exc).__name__}: {exc}"
            log.error("the LLM could not be loaded (%s): misses are answered by the fallback", self.llm_error)
        self.metrics.pair_table_rows.set(self.cache.size())
        self.ready.set()

    def sequence_version(self) -> str:
        return self.sequence.version if self.sequence else NO_MODEL

    def retrieve(self, pair: Pair | None, history: list[str]) -> tuple[list[tuple[str, int]], list[str], str]:
        """(top next for the pair, trending clusters outside the history, knowledge version), on the I/O thread."""
        assert self.knowledge is not None
        top_next = self.knowledge.top_next(*pair, n=MAX_TOP_NEXT + 2) if pair else []
        trending = [c for c, _, _ in self.knowledge.trending(n=MAX_TRENDING + 2, exclude=history)]
        return top_next, trending, self.knowledge.knowledge_version()

    def close(self) -> None:
        for executor in (self.io_executor, self.llm_executor):
            executor.shutdown(wait=False, cancel_futures=True)

"""The update strategies under comparison, behind one interface: update at a point, then answer pairs.

LLM strategies keep a **pair table** as the system does (models/pair_table.py): one row per pair with the model
version and the fingerprint (top next clusters shown) it was inferred with. They differ in what refreshes a row:

=============  ==================  =====================================  =========================================
strategy       model               knowledge in the prompt                a row is re-inferred when
=============  ==================  =====================================  =========================================
stale          base                the knowledge at the split (frozen)    never (the table built once at the split)
rag            base                the streaming knowledge (LanceDB)      its fingerprint changed (agents/pair_refresh)
finetune       periodic fine-tune  none                                   a new fine-tuned model is deployed
hybrid         periodic fine-tune  the streaming knowledge                either
=============  ==================  =====================================  =========================================

Rows are inferred lazily for the pairs that are evaluated -- exactly the answers a full table would hold -- and the
number of pairs a full-table refresh would have re-inferred is counted apart (`Ledger.pairs_changed`).

LLM-free baselines: a seeded random novel cluster; the most popular novel cluster (most transitions into it, all
time, from the streaming knowledge); the pair's top retrieved next cluster (count argmax, with the system's own
fallback -- models/recommend.fallback_cluster -- for a pair without knowledge).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.clusters import ClusterSet
from models.evaluation.costs import Ledger
from models.pair_table import fingerprint
from models.prompts import MAX_TOP_NEXT, MAX_TRENDING, Knowledge, candidate_ids
from models.recommend import fallback_cluster

Pair = tuple[str, str]
TopNext = dict[Pair, list[tuple[str, int]]]


@dataclass(frozen=True)
class Snapshot:
    """What the knowledge store returned at one point (every pair's next clusters, the trending clusters)."""

    top_next: TopNext  # every next cluster of every pair with counts, most first
    trending: tuple[str, ...]
    version: str

    def shown(self, pair: Pair) -> list[tuple[str, int]]:
        """The top next clusters a prompt shows for `pair` (outside the pair), as models/pair_table.infer cuts."""
        return [(c3, n) for c3, n in self.top_next.get(pair, []) if c3 not in pair][:MAX_TOP_NEXT]

    def fingerprint(self, pair: Pair) -> tuple[str, ...]:
        return fingerprint(self.top_next.get(pair, []), pair)


@dataclass
class PointState:
    point: int
    knowledge: Snapshot  # the streaming knowledge now
    split_knowledge: Snapshot  # the knowledge at the split
    finetuned_model: str | None  # the latest fine-tuned GGUF (None: none yet or fine-tuning skipped)
    knowledge_lag_s: float  # wall seconds from the chunk's last event published to it being in LanceDB
    model_lag_s: float | None  # when a fine-tune was deployed at this point: chunk published -> model ready


class Strategy(ABC):
    name: str
    label: str
    uses_llm: bool = False
    streaming: bool = False  # reads the streaming knowledge
    cadence: str = ""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.skipped: str | None = None

    @abstractmethod
    def answer(self, state: PointState, pairs: Sequence[Pair]) -> dict[Pair, str]:
        """The novel cluster for each pair at this point (any refresh work inside is charged to the ledger)."""


# ---------------------------------------------------------------------------------------------------- the LLM
class LlmPool:
    """Predictors by model path (the base stays loaded, a replaced fine-tune is closed) and a memo of exact
    prompts: decoding is deterministic, so an identical prompt to the same model gives the identical answer."""

    def __init__(self, settings: Any, clusters: ClusterSet, base_model: str, threads: int) -> None:
        self.settings, self.clusters, self.base_model, self.threads = settings, clusters, base_model, threads
        self._loaded: dict[str, Any] = {}
        self._memo: dict[tuple[Any, ...], tuple[str, float, float]] = {}
        self.cpu_per_inference: list[float] = []

    def predictor(self, path: str) -> Any:
        if path not in self._loaded:
            from models.llm import NovelClusterPredictor

            for old in [p for p in self._loaded if p != self.base_model]:
                self._loaded.pop(old).close()
            self._loaded[path] = NovelClusterPredictor(self.settings, self.clusters, model_path=path,
                                                       n_threads=self.threads)
        return self._loaded[path]

    def model_version(self, path: str) -> str:
        from models.llm import model_version

        return model_version(self.settings, path)

    def infer(self, path: str, pair: Pair, knowledge: Knowledge | None) -> tuple[str, float, float]:
        """(cluster, CPU seconds, wall seconds) -- the costs of the first, real inference even on a memo hit, so a
        strategy is charged what it would have paid on its own."""
        import time

        key = (path, pair, tuple(knowledge.top_next) if knowledge else None,
               tuple(knowledge.trending) if knowledge else None)
        if key not in self._memo:
            cpu, wall = time.process_time(), time.perf_counter()
            cluster = self.predictor(path).predict(pair, knowledge).cluster_id
            spent = time.process_time() - cpu
            self.cpu_per_inference.append(spent)
            self._memo[key] = (cluster, spent, time.perf_counter() - wall)
        return self._memo[key]

    def close(self) -> None:
        for predictor in self._loaded.values():
            predictor.close()
        self._loaded.clear()


@dataclass
class _Row:
    model: str
    fingerprint: tuple[str, ...] | None
    cluster: str


@dataclass
class LlmTableStrategy(Strategy):
    """A pair table kept by one of the LLM update rules (see the module docstring)."""

    name: str
    label: str
    pool: LlmPool
    finetuned: bool  # the model is the latest fine-tune (else the base)
    knowledge: str  # "split", "stream" or "none"
    cadence: str = ""
    uses_llm: bool = True
    rows: dict[Pair, _Row] = field(default_factory=dict)
    _last_fingerprints: dict[Pair, tuple[str, ...]] | None = None
    _last_model: str | None = None

    def __post_init__(self) -> None:
        Strategy.__init__(self)
        self.streaming = self.knowledge == "stream"

    def model_path(self, state: PointState) -> str | None:
        return state.finetuned_model if self.finetuned else self.pool.base_model

    def _snapshot(self, state: PointState) -> Snapshot | None:
        return {"split": state.split_knowledge, "stream": state.knowledge}.get(self.knowledge)

    def answer(self, state: PointState, pairs: Sequence[Pair]) -> dict[Pair, str]:
        path = self.model_path(state)
        if path is None:
            raise RuntimeError(f"{self.name}: no fine-tuned model to answer with")
        snapshot = self._snapshot(state)
        self._count_full_table_refresh(state, snapshot, path)
        out: dict[Pair, str] = {}
        for pair in pairs:
            wanted = snapshot.fingerprint(pair) if snapshot is not None else None
            row = self.rows.get(pair)
            stale_row = row is None or row.model != path or (self.knowledge == "stream"
                                                              and row.fingerprint != wanted)
            if stale_row:
                knowledge = (Knowledge(top_next=snapshot.shown(pair), trending=list(snapshot.trending)
                                       [:MAX_TRENDING]) if snapshot is not None else None)
                cluster, cpu_s, wall_s = self.pool.infer(path, pair, knowledge)
                self.ledger.cpu_s += cpu_s
                self.ledger.wall_s += wall_s
                self.ledger.inferences += 1
                row = self.rows[pair] = _Row(path, wanted, cluster)
            out[pair] = row.cluster
        return out

    def _count_full_table_refresh(self, state: PointState, snapshot: Snapshot | None, path: str) -> None:
        """Pairs of the whole table (every ordered pair) the real refresher would re-infer at this point."""
        every = len(self.pool.clusters.clusters) * (len(self.pool.clusters.clusters) - 1)
        if self._last_model is not None and path != self._last_model:
            self.ledger.pairs_changed += every  # a new model: every row is re-inferred
            self.ledger.model_updates += 1
        elif self.knowledge == "stream" and self._last_fingerprints is not None and snapshot is not None:
            pairs = set(self._last_fingerprints) | set(snapshot.top_next)
            self.ledger.pairs_changed += sum(1 for p in pairs if p[0] != p[1] and snapshot.fingerprint(p)
                                             != self._last_fingerprints.get(p, ()))
        self._last_model = path
        if snapshot is not None and self.knowledge == "stream":
            self._last_fingerprints = {p: snapshot.fingerprint(p) for p in snapshot.top_next}


# ---------------------------------------------------------------------------------------------------- baselines
class RandomNovel(Strategy):
    name, label, cadence = "random", "random novel cluster (seeded)", "none needed"

    def __init__(self, clusters: ClusterSet, seed: int) -> None:
        super().__init__()
        self.clusters, self.seed = clusters, seed

    def answer(self, state: PointState, pairs: Sequence[Pair]) -> dict[Pair, str]:
        # one draw per (seed, point, pair): like a table row, users sharing a pair share the answer
        return {pair: random.Random(f"{self.seed}:{state.point}:{pair[0]}:{pair[1]}")
                .choice(candidate_ids(pair, self.clusters)) for pair in pairs}


class PopularNovel(Strategy):
    name, label, cadence = "popular", "most popular novel cluster", "every knowledge sync"
    streaming = True

    def __init__(self, clusters: ClusterSet) -> None:
        super().__init__()
        self.clusters = clusters

    def answer(self, state: PointState, pairs: Sequence[Pair]) -> dict[Pair, str]:
        with self.ledger.measure():
            totals: dict[str, int] = {}
            for row in state.knowledge.top_next.values():
                for c3, n in row:
                    totals[c3] = totals.get(c3, 0) + n
            ranked = sorted(totals, key=lambda c: (-totals[c], c))
            return {pair: fallback_cluster(pair, [(c, totals[c]) for c in ranked], state.knowledge.trending,
                                           self.clusters) for pair in pairs}


class CountArgmax(Strategy):
    name, label, cadence = "count", "top retrieved next cluster (count argmax)", "every knowledge sync"
    streaming = True

    def __init__(self, clusters: ClusterSet) -> None:
        super().__init__()
        self.clusters = clusters

    def answer(self, state: PointState, pairs: Sequence[Pair]) -> dict[Pair, str]:
        with self.ledger.measure():
            return {pair: fallback_cluster(pair, state.knowledge.top_next.get(pair, []), state.knowledge.trending,
                                           self.clusters) for pair in pairs}


def llm_strategies(pool: LlmPool, finetune_every: int) -> list[LlmTableStrategy]:
    ft_cadence = f"a fine-tune every {finetune_every} points" if finetune_every else "one fine-tune at the split"
    return [
        LlmTableStrategy("stale", "stale: table built at the split, never refreshed", pool, False, "split",
                         cadence="never"),
        LlmTableStrategy("rag", "RAG only: base model, streaming knowledge", pool, False, "stream",
                         cadence="every knowledge sync (changed pairs)"),
        LlmTableStrategy("finetune", "fine-tuning only: periodic fine-tunes, no knowledge", pool, True, "none",
                         cadence=ft_cadence),
        LlmTableStrategy("hybrid", "hybrid: periodic fine-tunes + streaming knowledge", pool, True, "stream",
                         cadence=f"{ft_cadence} + every knowledge sync"),
    ]


# ---------------------------------------------------------------------------------------------------- validity
def free_generation(model_path: str | Path, prompts: Sequence[tuple[Pair, Knowledge | None]], clusters: ClusterSet,
                    threads: int) -> dict[Pair, str]:
    """Unconstrained greedy answers (what the model says without the server's constrained decoding), for the
    exact-match rate; uses the fine-tuning gates' generator (models/finetune/gates.py)."""
    from models.finetune.gates import GreedyGenerator
    from models.finetune.training import PromptTokenizer
    from models.prompts import prompt_segments

    tokenizer = PromptTokenizer(model_path)
    generator = GreedyGenerator(model_path, threads)
    try:
        max_new = max(len(tokenizer.tokenize(c.name)) for c in clusters.clusters.values()) + 4
        out = {}
        for pair, knowledge in prompts:
            static, rest = tokenizer.prompt(prompt_segments(pair, knowledge, clusters))
            out[pair] = tokenizer.detokenize(generator.answer(static, rest, max_new)).strip()
        return out
    finally:
        generator.close()
        tokenizer.close()

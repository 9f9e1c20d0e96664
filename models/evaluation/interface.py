"""What a strategy sees and returns: one interface for LLM strategies and LLM-free baselines alike.

A strategy answers in two phases, so that every LLM inference of every strategy and state can be run in bulk (over
processes, through the persistent cache) before any answer is read:

1. ``requests(state, cases)`` -- the inferences it needs at this state (none for a baseline). A request is keyed
   by (kind, opaque model identity, clusters version, exact prompt), never by the strategy: two strategies that ask
   the same model the same prompt share one inference, and a rerun reuses every inference whose key is unchanged.
2. ``answer(state, cases, inferred)`` -- one `Answer` per case, in order, reading the results of its requests.

An `Answer` is one served cluster, optionally with a ranking (hit@3) and a distribution over the novel clusters
(log-loss), so a later strategy that ranks or scores clusters gets every metric without touching the runner.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.evaluation.costs import Ledger
from models.evaluation.protocol import Case
from models.pair_table import fingerprint
from models.prompts import MAX_TOP_NEXT, MAX_TRENDING, Knowledge

Pair = tuple[str, str]
TopNext = dict[Pair, list[tuple[str, int]]]


@dataclass(frozen=True)
class Answer:
    cluster: str  # the served novel cluster (hit@1)
    ranking: tuple[str, ...] = ()  # novel clusters best first, starting with `cluster` (hit@k), when it ranks
    distribution: Mapping[str, float] | None = None  # probability of each novel cluster (sums to 1), when it has one

    def __post_init__(self) -> None:
        if self.ranking and self.ranking[0] != self.cluster:
            raise ValueError("a ranking must start with the served cluster")
        if self.distribution is not None:
            total = sum(self.distribution.values())
            if not math.isclose(total, 1.0, rel_tol=1e-6, abs_tol=1e-6) or min(self.distribution.values()) < 0:
                raise ValueError(f"a distribution must be non-negative and sum to 1 (sums to {total})")

    @classmethod
    def ranked(cls, ranking: Sequence[str], distribution: Mapping[str, float] | None = None) -> Answer:
        return cls(ranking[0], tuple(ranking), distribution)


@dataclass(frozen=True)
class Snapshot:
    """What the knowledge store returned at one state (every pair's next clusters, the trending clusters)."""

    top_next: TopNext  # every next cluster of every pair with counts, most first
    trending: tuple[str, ...]
    version: str

    def shown(self, pair: Pair) -> list[tuple[str, int]]:
        """The top next clusters a prompt shows for `pair` (outside the pair), as models/pair_table.infer cuts."""
        return [(c3, n) for c3, n in self.top_next.get(pair, []) if c3 not in pair][:MAX_TOP_NEXT]

    def fingerprint(self, pair: Pair) -> tuple[str, ...]:
        return fingerprint(self.top_next.get(pair, []), pair)

    def knowledge(self, pair: Pair) -> Knowledge:
        """The retrieved knowledge a prompt for `pair` carries."""
        return Knowledge(top_next=self.shown(pair), trending=list(self.trending)[:MAX_TRENDING])

    def support(self, pair: Pair) -> int:
        """Transitions out of `pair` in this knowledge."""
        return sum(n for _, n in self.top_next.get(pair, []))


@dataclass
class PointState:
    """One state (0: the split, k: evaluation point k) as every strategy sees it."""

    point: int
    knowledge: Snapshot  # the streaming knowledge now
    split_knowledge: Snapshot  # the knowledge at the split
    models: Mapping[str, str | None] = field(default_factory=dict)  # model role -> GGUF now (None: not available)
    knowledge_lag_s: float = 0.0  # wall seconds from the chunk's last event published to it being in LanceDB
    model_lag_s: Mapping[str, float] = field(default_factory=dict)  # role -> chunk published -> a new model ready
    scores: Any = None  # the sequence model's scores per case key (models/evaluation/grounding.py)


@dataclass(frozen=True)
class InferenceRequest:
    """One LLM inference: `kind` names what the engine computes (models/evaluation/inference.py). Hashable, so a
    strategy finds its results by the very requests it made."""

    kind: str
    model_path: str
    model_version: str  # opaque identity of the model file (models/llm.model_version)
    pair: Pair
    top_next: tuple[tuple[str, int], ...] | None  # the knowledge shown; None: a prompt without retrieved knowledge
    trending: tuple[str, ...] = ()

    @classmethod
    def of(cls, kind: str, model_path: str, model_version: str, pair: Pair, knowledge: Knowledge | None
           ) -> InferenceRequest:
        if knowledge is None:
            return cls(kind, model_path, model_version, pair, None)
        return cls(kind, model_path, model_version, pair, tuple(knowledge.top_next), tuple(knowledge.trending))

    @property
    def knowledge(self) -> Knowledge | None:
        if self.top_next is None:
            return None
        return Knowledge(top_next=list(self.top_next), trending=list(self.trending))

    def key(self, clusters_version: str, prompt: str) -> str:
        """The cache key: what was asked of which model, never who asked."""
        text = "\0".join((self.kind, self.model_version, clusters_version, prompt))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Inferred:
    """An inference's result and what its first, real run cost (charged again on a memo or cache hit, so each
    strategy is charged what it would have paid on its own)."""

    result: Mapping[str, Any]  # for "novel": {"cluster": id}
    cpu_s: float
    wall_s: float
    cached: bool = False  # came from an earlier run's cache


class Strategy(ABC):
    name: str
    label: str
    uses_llm: bool = False
    streaming: bool = False  # reads the streaming knowledge
    cadence: str = ""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.skipped: str | None = None

    def requests(self, state: PointState, cases: Sequence[Case]) -> list[InferenceRequest]:
        """The inferences this strategy needs at `state` (default: none)."""
        return []

    @abstractmethod
    def answer(self, state: PointState, cases: Sequence[Case], inferred: Mapping[InferenceRequest, Inferred]
               ) -> list[Answer]:
        """One answer per case, in order (any refresh work inside is charged to the ledger)."""

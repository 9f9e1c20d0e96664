"""Typed records of the public contract (../shared/contract.md). orjson serialises these dataclasses natively."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InteractionEvent:
    event_id: str
    user_id: str
    item_id: str
    ts: float  # event time, seconds since the epoch
    event_type: str
    value: float | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    error: str
    topic: str
    partition: int
    offset: int
    raw: str  # the original bytes, base64
    at: float  # wall-clock time of the rejection


@dataclass(frozen=True, slots=True)
class RecommendationRequest:
    request_id: str
    user_id: str
    ts: float
    k: int = 10


@dataclass(frozen=True, slots=True)
class ScoredItem:
    item_id: str
    score: float


@dataclass(frozen=True, slots=True)
class NovelCluster:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Recommendation:
    request_id: str
    user_id: str
    ts: float
    produced_at: float
    history_clusters: list[str]
    novel_cluster: NovelCluster | None
    items: list[ScoredItem]
    source: str  # "table" | "llm" | "fallback"
    model_version: str
    knowledge_version: str

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
class SourcedEvent:
    """A valid event with where it came from. ``partition`` is the partition whose state holds the user (the
    source partition, or the one a mis-partitioned record was routed to); ``source`` says which topic it was read
    from ("i": interactions, "r": its repartition topic) and ``offset`` where: state stays idempotent per source."""

    event: InteractionEvent
    partition: int
    offset: int
    source: str = "i"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    error: str
    topic: str
    partition: int
    offset: int
    raw: str  # the original bytes (only a prefix of them when `truncated`), base64
    at: float  # wall-clock time of the rejection
    raw_size: int = 0  # length of the original bytes
    raw_sha256: str = ""  # of the original bytes (all of them, also when `raw` is a prefix)
    truncated: bool = False  # `raw` holds only the first dead_letter_max_raw_bytes of the original
    # Where the record was first produced, when it reached `topic` by a reroute (the repartition topics):
    # "<topic>:<partition>@<offset>".
    origin: str | None = None


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

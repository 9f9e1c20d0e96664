"""Prometheus metrics of one worker. Each app gets its own registry so several apps can live in one process (tests)."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_in = Counter("explorer_events_in", "Interaction records consumed", registry=r)
        self.events_valid = Counter("explorer_events_valid", "Interaction events that passed validation", registry=r)
        self.events_rejected = Counter(
            "explorer_events_rejected", "Interaction records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.consumer_lag = Gauge(
            "explorer_consumer_lag", "Records behind the partition's high-water mark", ["topic", "partition"],
            registry=r,
        )
        self.consumer_queued_records = Gauge(
            "explorer_consumer_queued_records",
            "Fetched interactions records handed to the ingest agent and not yet acked (bounded by "
            "EXPLORER_CONSUMER_MAX_QUEUED_RECORDS)", registry=r,
        )
        self.consumer_saturated_fetches = Counter(
            "explorer_consumer_saturated_fetches",
            "Fetches that left the interactions partitions out because the ingest agent had enough queued "
            "(the backlog waited at the broker)", registry=r,
        )
        self.consumer_queued_requests = Gauge(
            "explorer_consumer_queued_requests",
            "Fetched requests handed to the recommender and not yet answered and acked (bounded by "
            "EXPLORER_CONSUMER_MAX_QUEUED_REQUESTS)", registry=r,
        )
        self.consumer_saturated_request_fetches = Counter(
            "explorer_consumer_saturated_request_fetches",
            "Fetches that left the request partitions out because enough requests were in flight (a flood waited at "
            "the broker while interactions went on)", registry=r,
        )
        self.gc_survivor_freezes = Counter(
            "explorer_gc_survivor_freezes",
            "Full garbage collections whose survivors were frozen out of later ones (streams/gc_freeze.py)", registry=r,
        )
        self.gc_thawed_garbage = Counter(
            "explorer_gc_thawed_garbage", "Objects a thaw freed: garbage that freezing had kept alive until then",
            registry=r,
        )
        self.event_latency = Histogram(
            "explorer_event_latency_seconds", "Broker append time to processed, of each batch's oldest record",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_seconds = Histogram(
            "explorer_batch_processing_seconds", "Time spent processing one batch of events",
            buckets=_LATENCY_BUCKETS, registry=r,
        )

        self.ingest_first_batch_at = Gauge(
            "explorer_ingest_first_batch_at_seconds", "Wall time the first interactions batch was processed",
            registry=r,
        )
        self.ingest_first_batch_records = Gauge(
            "explorer_ingest_first_batch_records", "Records in the first interactions batch", registry=r,
        )
        self.ingest_last_batch_at = Gauge(
            "explorer_ingest_last_batch_at_seconds", "Wall time the latest interactions batch was processed",
            registry=r,
        )
        self.events_misrouted = Counter(
            "explorer_events_misrouted", "Records that arrived on a partition other than their user's (the producer "
            "does not partition by murmur2) and were rerouted through the repartition topic", ["topic"], registry=r,
        )
        self.events_rerouted_in = Counter(
            "explorer_events_rerouted_in", "Rerouted records consumed from a repartition topic", ["topic"], registry=r,
        )
        self.auto_requests = Counter(
            "explorer_auto_requests", "Recommendation requests sent after every auto_request_every-th positive "
            "engagement", registry=r,
        )
        self.agent_restarts = Counter(
            "explorer_agent_restarts", "Agents that crashed and were restarted by Faust", ["agent"], registry=r,
        )
        self.worker_healthy = Gauge(
            "explorer_worker_healthy", "1 when /health says ok, 0 when degraded or failed", registry=r,
        )
        self.processing_retries = Counter(
            "explorer_processing_retries", "Event processing attempts that raised and were retried", registry=r,
        )
        self.knowledge_sync_failures = Counter(
            "explorer_knowledge_sync_failures", "Knowledge store writes that failed (retried at the next round)",
            registry=r,
        )

        self.transition_events = Gauge(
            "explorer_transition_events", "Events seen by the transitions state, by outcome", ["outcome"], registry=r
        )

        self.knowledge_sync_seconds = Histogram(
            "explorer_knowledge_sync_seconds", "Time of one sync of changed partitions to LanceDB",
            buckets=_LATENCY_BUCKETS, registry=r,
        )

        self.requests_in = Counter("explorer_requests_in", "Recommendation requests consumed", registry=r)
        self.requests_rejected = Counter(
            "explorer_requests_rejected", "Recommendation requests sent to the dead-letter topic", ["reason"],
            registry=r,
        )
        self.recommendations_out = Counter(
            "explorer_recommendations_out", "Recommendations produced, by source of the novel cluster", ["source"],
            registry=r,
        )
        self.duplicate_requests = Counter(
            "explorer_duplicate_requests", "Requests whose request_id was answered before (the same answer is re-sent)",
            registry=r,
        )
        self.request_wait_seconds = Histogram(
            "explorer_request_wait_seconds", "Request appended to the broker -> this worker starts answering it (fetch,"
            " queueing behind other work on the event loop)", buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.request_seconds = Histogram(
            "explorer_request_seconds", "Request consumed to recommendation sent, by source", ["source"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.llm_failures = Counter(
            "explorer_llm_failures", "LLM calls that failed or timed out (answered by the fallback)", ["reason"],
            registry=r,
        )
        self.pair_inferences = Counter(
            "explorer_pair_inferences", "Pair-table rows (re-)inferred by this worker", ["trigger"], registry=r
        )
        self.pair_refresh_lag = Histogram(
            "explorer_pair_refresh_lag_seconds", "Knowledge change seen to pair-table row re-inferred",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.pair_table_rows = Gauge(
            "explorer_pair_table_rows", "Pair-table rows this worker serves from, for the current model", registry=r
        )

    def watch_gc(self) -> None:
        """Time the interpreter's garbage collections (a pause of the whole worker, event loop included): a full
        collection over a large state is one of the things that can hold every batch back."""
        pauses = Histogram("explorer_gc_pause_seconds", "Garbage collection pauses, by generation", ["generation"],
                           buckets=_LATENCY_BUCKETS, registry=self.registry)
        started = [0.0]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses.labels(str(info["generation"])).observe(time.perf_counter() - started[0])

        gc.callbacks.append(on_gc)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

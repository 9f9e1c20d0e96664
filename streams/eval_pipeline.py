"""The streamed part of `explorer eval`: replay MovieLens through the real pipeline in event-time chunks.

An isolated topic set and consumer group on the configured broker, one real `explorer worker` subprocess (counting
only: the evaluation refreshes each strategy's pair table itself, deterministically, instead of the worker's
wall-clock pair refresher), and the worker's LanceDB knowledge store in the evaluation's own data dir. Each chunk is
published as fast as the producer goes, then the evaluation waits until the worker's consumer group has committed
it (streams/offsets.caught_up: its state is durable) and the knowledge store holds exactly the transitions the
contract says those events make (models/reference.py on the same events) -- so every evaluation point sees the
knowledge of exactly the events before it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from models.clusters import ClusterSet
from models.evaluation.costs import process_cpu_s
from models.evaluation.interface import Snapshot
from models.prompts import MAX_TRENDING
from models.reference import reference_counts
from streams.movielens import Rating
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkTiming:
    events: int
    publish_s: float  # publishing the chunk
    commit_s: float  # after publishing: until the worker's group committed all of it
    sync_s: float  # after publishing: until LanceDB held exactly its transitions (the knowledge lag)


def isolated_settings(settings: Settings, work_dir: Path) -> Settings:
    """The evaluation's own topics, consumer group, web port and data dir (its LanceDB, its models)."""
    from streams.movielens import dataset_dir
    from streams.worker_process import free_port

    tag = uuid.uuid4().hex[:8]
    return settings.model_copy(update={
        "topic_prefix": f"eval-{tag}.", "app_id": f"explorer-eval-{tag}", "data_dir": work_dir,
        "lancedb_uri": None, "web_port": free_port(), "recommendations_enabled": False,
        "movielens_dir": dataset_dir(settings, progress=False), "serving_clusters_version": None,
    })


class EvalPipeline:
    """Use as a context manager: starts the worker, replays chunks, reads the knowledge, stops the worker."""

    def __init__(self, settings: Settings, clusters: ClusterSet, log_dir: Path) -> None:
        self.settings, self.clusters, self.log_dir = settings, clusters, log_dir
        self._stack = ExitStack()
        self.worker: Any = None
        self.store: Any = None
        self._replayed: list[Rating] = []
        self._worker_cpu_start: float | None = None

    def __enter__(self) -> Self:
        from models.knowledge import KnowledgeStore
        from streams.acls import provisioning_access
        from streams.kafka_check import check_kafka
        from streams.topics import create_topics
        from streams.worker_process import run_worker

        check_kafka(self.settings, provisioning_access(self.settings))  # it creates (and deletes) its own topics
        create_topics(self.settings)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.worker = self._stack.enter_context(run_worker(self.settings, self.log_dir, ready_timeout_s=180.0))
        self._worker_cpu_start = process_cpu_s(self.worker.process.pid)
        self.store = KnowledgeStore.from_settings(self.settings, self.clusters.version, refresh_s=0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.delete_topics()

    def delete_topics(self) -> None:
        """Remove the evaluation's topics (its prefix) and state changelogs (its app id) from the shared broker."""
        from streams.topics import delete_deployment_topics

        try:
            delete_deployment_topics(self.settings)
        except Exception as exc:  # noqa: BLE001 -- leftovers of an isolated prefix harm nobody: say so, don't fail the report
            log.warning("could not delete the evaluation's topics: %s", exc)

    def worker_cpu_s(self) -> float | None:
        now = process_cpu_s(self.worker.process.pid) if self.worker is not None else None
        return None if now is None or self._worker_cpu_start is None else now - self._worker_cpu_start

    def replay(self, ratings: Sequence[Rating], on_progress: Callable[[int], None] | None = None,
               stall_s: float = 180.0) -> ChunkTiming:
        from streams.replay import publish_events

        started = time.perf_counter()
        publish_events(self.settings, (r.to_event() for r in ratings), on_progress=on_progress)
        published = time.perf_counter()
        self._replayed.extend(ratings)
        expected = reference_counts(self._replayed, self.clusters.cluster_of, self.settings)
        want = sum(sum(row.values()) for row in expected.total.values())
        self._wait(self._committed, stall_s, "the worker to commit the chunk")
        committed = time.perf_counter()
        self._wait(lambda: self._knowledge_total() == want, stall_s,
                   f"the knowledge store to hold {want} transitions")
        synced = time.perf_counter()
        return ChunkTiming(len(ratings), published - started, committed - published, synced - published)

    def _committed(self) -> bool:
        from streams.app import consumer_group
        from streams.offsets import caught_up
        from streams.topics import INTERACTIONS, topic_name

        return caught_up(self.settings, consumer_group(self.settings, self.clusters.version),
                         topic_name(self.settings, INTERACTIONS))

    def _knowledge_total(self) -> int:
        self.store.refresh()
        return sum(n for row in self.store.all_top_next(n=len(self.clusters.clusters)).values() for _, n in row)

    def _wait(self, condition: Callable[[], bool], stall_s: float, what: str) -> None:
        """Poll until `condition`; fail only when the worker stops making progress for `stall_s` (or dies)."""
        last_in, last_change = -1.0, time.monotonic()
        while not condition():
            if not self.worker.alive():
                raise RuntimeError(f"the evaluation's worker died:\n{self.worker.log_tail()}")
            consumed = self.worker.metric("explorer_events_in_total")
            if consumed != last_in:
                last_in, last_change = consumed, time.monotonic()
            elif time.monotonic() - last_change > stall_s:
                raise TimeoutError(f"no progress for {stall_s:.0f}s waiting for {what}; worker log: "
                                   f"{self.worker.log_path}")
            time.sleep(0.5)

    def snapshot(self) -> Snapshot:
        """Every pair's next clusters and the trending clusters, as the knowledge store returns them now."""
        self.store.refresh()
        top_next = self.store.all_top_next(n=len(self.clusters.clusters))
        trending = tuple(c for c, _, _ in self.store.trending(n=MAX_TRENDING))
        return Snapshot(top_next=top_next, trending=trending, version=self.store.knowledge_version())

    def state_counts(self) -> Any:
        """The transition counts of the durable state (the changelog), for curating a fine-tune."""
        from streams.state_reader import read_state_counts

        return read_state_counts(self.settings, self.clusters.version)

"""Where a request's time goes inside a worker: a diagnostic, loaded only when asked for.

    PYTHONPATH=bench/diagnostics DIAG_REQUEST_HOPS=1 python -m bench.recommend_latency ...

Python imports a `sitecustomize` module at start-up in every process; in an `explorer worker` process with the variable
set this one wraps a few methods (after the worker imported them) to time, per request, how long after its append
(the record's timestamp) it was (1) returned by a fetch in Faust's consumer thread, (2) handed to the worker's main
loop, (3) given to the recommender agent, and (6) answered and delivered; and how long (4) computing the answer and
(5) the handler as a whole (the answer, then its two deliveries) took; every 2 s it writes the samples to
`$TMPDIR/explorer-request-hops-<pid>.json` (lists in arrival order: the bench's phases follow one another). The same
file holds each request's hops under its `topic:partition:offset` ("traces": also when its answer was computed and
each of its two deliveries done), the stalls of a watchdog thread that asks to run every 2 ms, every fetch aiokafka
sent (when, how long, which request partitions at which offsets), and each time its fetch routine built no fetch
(why each partition was left out, what it had pending). It patches private methods of Faust, aiokafka and agents/ on
purpose -- a measurement aid, never imported by the product.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any

SAMPLES: dict[str, list[float]] = {}
TRACES: dict[str, dict[str, float]] = {}  # "topic:partition:offset" -> step -> seconds after the append
CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("diag_request", default=None)


def _record(name: str, seconds: float, record_id: str | None = None) -> None:
    SAMPLES.setdefault(name, []).append(seconds)
    if record_id is not None:
        TRACES.setdefault(record_id, {})[name] = seconds


def _wrap(owner: Any, name: str, after: Any) -> None:
    """Replace the coroutine method `owner.name` by one that awaits it, then calls after(result, *args)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        after(result, *args)
        return result

    setattr(owner, name, wrapper)


def _patch() -> None:
    while not all(hasattr(sys.modules.get(module), cls) for module, cls in
                  (("agents.recommender", "RecommenderAgent"), ("agents.batching", "BatchingConsumer"))):
        time.sleep(0.05)
    from faust.transport.drivers import aiokafka as faust_aiokafka

    import agents.batching as batching
    import agents.recommender as recommender
    from streams.topics import RECOMMENDATION_REQUESTS  # in the request topic's name and its repartition topic's

    def ages(label: str, records_by_tp: Any) -> None:
        now = time.time()
        for tp, records in (records_by_tp or {}).items():
            if RECOMMENDATION_REQUESTS in tp.topic:
                for record in records:
                    _record(label, now - record.timestamp / 1000, f"{tp.topic}:{tp.partition}:{record.offset}")

    from aiokafka.consumer.fetcher import Fetcher

    proc_fetch = Fetcher._proc_fetch_request

    async def timed_fetch(self: Any, assignment: Any, node_id: Any, request_: Any) -> Any:
        sent = time.time()
        result = await proc_fetch(self, assignment, node_id, request_)
        FETCHES.append((sent, time.time(), {f"{topic}:{partition}": offset for topic, partitions in request_.topics
                                            if RECOMMENDATION_REQUESTS in topic for partition, offset, _ in partitions},
                        sum(len(partitions) for _, partitions in request_.topics)))
        return result

    Fetcher._proc_fetch_request = timed_fetch
    actions = Fetcher._get_actions_per_node

    def noted_actions(self: Any, assignment: Any) -> Any:
        result = actions(self, assignment)
        if not result[0]:  # no fetch sent: why each partition was left out, and how long the routine will sleep
            why: dict[str, int] = {}
            for tp in assignment.tps:
                state = assignment.state_value(tp)
                kind = ("req-" if RECOMMENDATION_REQUESTS in tp.topic else "") + (
                    "buffered" if tp in self._records else "in-flight" if self._in_flight else
                    "paused" if state.paused else "no-position" if not state.has_valid_position else "other")
                why[kind] = why.get(kind, 0) + 1
            why["pending"] = len(self._pending_tasks)
            why["pending-done"] = sum(task.done() for task in self._pending_tasks)
            why["in-flight-nodes"] = len(self._in_flight)
            IDLE_ROUTINE.append((time.time(), result[2], why))
        return result

    Fetcher._get_actions_per_node = noted_actions
    _wrap(faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records",
          lambda result, *_: ages("1_fetched_in_consumer_thread", result))
    _wrap(batching.BatchingConsumer, "_next_records", lambda result, *_: ages("2_on_main_loop", result[0]))

    handle = recommender.RecommenderAgent.handle

    async def handled(self: Any, batch: Any) -> None:
        now = time.time()
        for record in batch.records:
            _record("3_handed_to_agent", now - record.timestamp / 1000,
                    f"{record.topic}:{record.partition}:{record.offset}")
        await handle(self, batch)

    recommender.RecommenderAgent.handle = handled
    answer = recommender.RequestHandler.answer

    async def answered(self: Any, request: Any, partition: int, waited_s: float) -> bytes:
        started = time.perf_counter()
        value = await answer(self, request, partition, waited_s)
        _record("4_answer_computed_in", time.perf_counter() - started)
        record_id = CURRENT.get()
        if record_id is not None:
            steps = TRACES[record_id]
            steps["4_answer_computed_after_append"] = time.time() - steps["appended_at"]
        return value

    import agents.outbox as outbox
    delivered = outbox.OutboxUnit.delivered

    async def timed_delivered(self: Any) -> None:
        await delivered(self)
        record_id = CURRENT.get()
        if record_id is not None:
            steps = TRACES[record_id]
            steps[f"5_delivery_{sum(k.startswith('5_delivery_') for k in steps) + 1}_after_append"] = (
                time.time() - steps["appended_at"])

    outbox.OutboxUnit.delivered = timed_delivered

    recommender.RequestHandler.answer = answered
    request = recommender.RecommenderAgent._request

    async def requested(self: Any, request_: Any, partition: int, record: Any) -> None:
        started = time.perf_counter()
        record_id = f"{record.topic}:{record.partition}:{record.offset}"
        begun = time.time() - record.timestamp / 1000
        TRACES.setdefault(record_id, {})["appended_at"] = record.timestamp / 1000
        CURRENT.set(record_id)
        await request(self, request_, partition, record)
        _record("5_handler_total_incl_deliveries", time.perf_counter() - started, record_id)
        _record("6_delivered_after_append", time.time() - record.timestamp / 1000, record_id)
        TRACES[record_id]["3b_handler_started"] = begun
        TRACES[record_id]["at"] = time.time()

    recommender.RecommenderAgent._request = requested


STALLS: list[dict[str, Any]] = []
IDLE_ROUTINE: list[tuple[float, float, dict[str, int]]] = []  # when no fetch was built: time, its sleep, why
FETCHES: list[tuple[float, float, dict[str, int], int]] = []  # sent, returned, request partitions' offsets, partitions


def _watch_stalls() -> None:
    """A thread that asks to run every 2 ms: when it runs 10 ms late, another thread held the GIL (or the process had
    no core) that long; note when, how late, and where the other threads were right after (their innermost frames)."""
    import traceback

    me = threading.get_ident()
    while True:
        started = time.perf_counter()
        time.sleep(0.002)
        late = time.perf_counter() - started - 0.002
        if late > 0.010:
            names = {thread.ident: thread.name for thread in threading.enumerate()}
            where = {}
            for ident, frame in sys._current_frames().items():
                if ident != me:
                    stack = traceback.extract_stack(frame)[-4:]
                    where[names.get(ident, str(ident))] = [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}"
                                                          for f in stack]
            STALLS.append({"at": time.time(), "late": late, "where": where})


def _dump() -> None:
    path = os.path.join(tempfile.gettempdir(), f"explorer-request-hops-{os.getpid()}.json")
    while True:
        time.sleep(2)
        snapshot: dict = {name: list(values) for name, values in list(SAMPLES.items())}  # the loop appends meanwhile
        snapshot["traces"] = {key: dict(steps) for key, steps in list(TRACES.items())}
        snapshot["stalls"] = list(STALLS)
        snapshot["fetches"] = FETCHES[-20000:]
        snapshot["idle_routine"] = IDLE_ROUTINE[-20000:]
        with open(path, "w") as out:
            json.dump(snapshot, out)


if os.environ.get("DIAG_REQUEST_HOPS") and "worker" in sys.argv[1:3]:  # `-m streams.cli worker`, `explorer worker`
    threading.Thread(target=_patch, daemon=True, name="diag-patch").start()
    threading.Thread(target=_dump, daemon=True, name="diag-dump").start()
    threading.Thread(target=_watch_stalls, daemon=True, name="diag-stalls").start()

"""The batch path through Faust (agents/batching.py): commits never pass an unprocessed record, batches are acked
whole and only once processed, and the Faust code it overrides is the code it was written against."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Iterator

import pytest
from aiokafka.consumer.fetcher import Fetcher
from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.types.tuples import ConsumerMessage, Message

from agents.batching import BatchingConsumer, ExplorerApp, RecordBatch, SourceRecord

TOPIC = "interactions"
P0 = TP(TOPIC, 0)

# sha256 (first 16 hex digits) of the source of every Faust function agents/batching.py overrides or relies on, as
# of faust-streaming 0.15.3. A mismatch means Faust changed there: re-read the new code and agents/batching.py
# (its module docstring lists what each override fixes), then update the digest.
PINNED = {
    (Consumer, "_drain_messages"): "44a2500309e83c63",
    (Consumer, "getmany"): "4b168d84882a70d6",
    (Consumer, "ack"): "5fcf41cf45153475",
    (Consumer, "_new_offset"): "1d2c7ea89a7ad4f1",
    (Consumer, "seek"): "b86a9fe05f956b30",
    (Consumer, "perform_seek"): "0e8c130ff4b0afd8",
    (ThreadDelegateConsumer, "_commit"): "a20eec84e4b2ed50",
    (aiokafka_driver.AIOKafkaConsumerThread, "on_start"): "38b4e8bd1e10723a",
    (aiokafka_driver.Consumer, "_new_consumer_thread"): "0870ec53dea75083",
    # aiokafka: the fetcher whose prefetch backoff and fetch wait PromptFetchConsumerThread sets, and the code that
    # applies them
    (Fetcher, "__init__"): "bf21ecb7e0f210b7",
    (Fetcher, "_get_actions_per_node"): "1dab2cf937d165d0",
    # ... and the routine that calls it, whose done-callback race agents/batching.py `tune_fetch_actions` works around
    (Fetcher, "_fetch_requests_routine"): "2a8ec5932644c9b0",
    # ... and the one that returns only the partitions asked for, keeping the others' records buffered (the bound on
    # queued records leaves the bulk partitions out of a fetch and relies on it)
    (Fetcher, "fetched_records"): "be4348896b9b66af",
}


def digest(owner: type, name: str) -> str:
    return hashlib.sha256(inspect.getsource(getattr(owner, name)).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("owner", "name"), list(PINNED))
def test_the_overridden_faust_code_is_the_code_the_overrides_were_written_for(owner: type, name: str) -> None:
    assert digest(owner, name) == PINNED[(owner, name)], (
        f"faust {owner.__module__}.{owner.__name__}.{name} changed: re-check agents/batching.py against it")


def test_the_app_uses_the_batching_consumer_and_the_idempotent_producer() -> None:
    async def scenario() -> tuple[type, dict]:
        app = ExplorerApp("t-batching", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)
        return type(app.consumer), dict(app.producer._settings_extra())

    consumer_type, extra = asyncio.run(scenario())
    assert consumer_type is BatchingConsumer
    assert extra["enable_idempotence"] is True and extra["acks"] == "all"


@pytest.fixture
def consumer() -> Iterator[BatchingConsumer]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = ExplorerApp("t-batching-offsets", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)
    app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
    try:
        yield app.consumer  # type: ignore[misc]
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def batch(first: int, last: int, generation: int = 1) -> RecordBatch:
    records = [SourceRecord(TOPIC, 0, o, 1_000, b"k", b"v", None) for o in range(first, last + 1)]
    return RecordBatch(P0, records, generation)


def message(offset: int) -> Message:
    return ConsumerMessage(TOPIC, 0, offset, 1.0, 0, None, b"k", b"v", None, tp=P0)


def test_a_batch_is_acked_whole_and_only_once_processed(consumer: BatchingConsumer) -> None:
    consumer._committed_offset[P0] = 0
    skipped = batch(0, 4)
    assert skipped.ack(consumer) is False  # Faust's iterator acking a batch it skipped (a rebalance) does nothing
    assert consumer._new_offset(P0) is None
    assert consumer.ack_processed(skipped) is True
    assert consumer._new_offset(P0) == 5
    assert consumer.ack_processed(skipped) is False  # once


def test_a_crashed_consumer_commits_nothing_instead_of_waiting_on_its_stopped_thread(
        consumer: BatchingConsumer) -> None:
    calls: list[dict] = []

    class Thread:  # the consumer's thread; after a crash nobody would ever answer this call
        async def commit(self, offsets: dict) -> bool:
            calls.append(offsets)
            return True

    consumer._thread = Thread()  # type: ignore[assignment]
    loop = asyncio.get_event_loop()
    assert loop.run_until_complete(consumer._commit({P0: 5})) is True  # healthy: the commit goes to the thread
    consumer._crash(RuntimeError("a failed delivery"))
    assert loop.run_until_complete(consumer._commit({P0: 9})) is False
    assert calls == [{P0: 5}]


def test_no_commit_passes_an_unacked_batch_before_the_first_commit(consumer: BatchingConsumer) -> None:
    consumer._committed_offset[P0] = None  # a new consumer group: nothing committed yet
    consumer._first_delivered[P0] = 0
    crashed, later = batch(0, 9), batch(10, 19)
    consumer.ack_processed(later)
    assert consumer._new_offset(P0) is None
    # Faust's own rule commits straight past the unprocessed 0..9 here: the records the issue saw vanish.
    consumer._acked[P0] = list(later.offsets())
    assert Consumer._new_offset(consumer, P0) == 20
    consumer._acked[P0] = list(later.offsets())
    consumer._acked_index[P0] = set(later.offsets())
    consumer.ack_processed(crashed)
    assert consumer._new_offset(P0) == 20


@pytest.mark.parametrize("committed", [0, 10])
def test_no_commit_passes_a_hole_of_one_offset_or_after_a_commit_at_zero(consumer: BatchingConsumer,
                                                                         committed: int) -> None:
    consumer._committed_offset[P0] = committed
    for offset in range(committed + 1, committed + 6):  # the record at `committed` itself was never acked
        consumer.ack(message(offset))
    assert consumer._new_offset(P0) is None
    after = list(range(committed + 1, committed + 6))
    consumer._acked[P0] = list(after)
    assert Consumer._new_offset(consumer, P0) == committed + 6  # Faust's rule: past the hole
    consumer._acked[P0], consumer._acked_index[P0] = list(after), set(after)
    consumer.ack(message(committed))
    assert consumer._new_offset(P0) == committed + 6


def test_offsets_without_records_count_once_the_acks_reach_them(consumer: BatchingConsumer) -> None:
    consumer._committed_offset[P0] = 10
    consumer._delivering(P0, 12)  # the first record after the seek is 12: 10 and 11 hold none (compaction, markers)
    consumer._delivered(P0, 14)
    consumer.ack_processed(batch(12, 14))
    assert consumer._new_offset(P0) == 15
    consumer._committed_offset[P0] = 15  # what Faust's commit records
    consumer._delivering(P0, 18)  # 15..17 hold none
    consumer.ack_processed(batch(18, 18))
    assert consumer._new_offset(P0) == 19


def test_a_seek_starts_delivery_again_at_the_seek_position(consumer: BatchingConsumer) -> None:
    records = [type("R", (), {"offset": o})() for o in range(5, 10)]
    consumer._delivered(P0, 7)
    assert [r.offset for r in consumer._fresh(P0, records)] == [8, 9]
    consumer._forget_positions([P0])
    consumer._read_offset[P0] = 6  # where Faust's seek() puts a partition
    assert [r.offset for r in consumer._fresh(P0, records)] == [6, 7, 8, 9]


def test_the_idempotent_producer_keeps_fausts_other_settings() -> None:
    assert issubclass(aiokafka_driver.Transport, object)
    base = inspect.getsource(aiokafka_driver.Producer._settings_extra)
    assert "enable_idempotence" in base  # Faust sets it only for transactions; agents/batching.py always does


class _Fetcher:
    """The attributes of aiokafka's fetcher the consumer thread sets or wraps; records the fetch wait each fetch
    would be built with, as its `_get_actions_per_node` reads it."""

    _prefetch_backoff = 0.1  # aiokafka's default
    _fetch_max_wait_ms = 1500  # Faust's

    def __init__(self) -> None:
        self._records: dict[TP, object] = {}
        self._in_flight: set[int] = set()
        self._pending_tasks: set[object] = set()
        self.built_with: list[tuple[int, bool]] = []  # (fetch wait, whether the node looked busy)

    def _get_actions_per_node(self, assignment: object) -> str:
        self.built_with.append((self._fetch_max_wait_ms, bool(self._in_flight)))
        return "actions"


def _start_thread(monkeypatch, app_backoff, fetcher, app_fetch_wait=None) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from agents.batching import PromptFetchConsumerThread

    async def started(self) -> None:  # what Faust's on_start leaves: a started aiokafka consumer
        self._consumer = SimpleNamespace(_fetcher=fetcher)

    monkeypatch.setattr(aiokafka_driver.AIOKafkaConsumerThread, "on_start", started)
    thread = object.__new__(PromptFetchConsumerThread)
    thread.app = SimpleNamespace(prefetch_backoff_s=app_backoff, fetch_max_wait_s=app_fetch_wait)
    asyncio.run(thread.on_start())


def test_the_consumer_thread_gives_the_fetcher_the_apps_prefetch_backoff(monkeypatch) -> None:
    fetcher = _Fetcher()
    _start_thread(monkeypatch, 0.01, fetcher)
    assert fetcher._prefetch_backoff == 0.01
    assert fetcher._fetch_max_wait_ms == 1500
    untouched = _Fetcher()
    _start_thread(monkeypatch, None, untouched)
    assert untouched._prefetch_backoff == 0.1


def test_the_consumer_thread_gives_the_fetcher_the_apps_fetch_wait_in_ms(monkeypatch) -> None:
    fetcher = _Fetcher()
    _start_thread(monkeypatch, None, fetcher, app_fetch_wait=0.02)
    assert (fetcher._fetch_max_wait_ms, fetcher._prefetch_backoff) == (20, 0.1)
    tiny = _Fetcher()
    _start_thread(monkeypatch, None, tiny, app_fetch_wait=0.0001)
    assert tiny._fetch_max_wait_ms == 1  # 0 would make an idle worker spin on empty fetches


class _Task:
    def __init__(self, done: bool) -> None:
        self._done = done

    def done(self) -> bool:
        return self._done


def test_fetches_built_while_a_request_partition_holds_fetched_records_wait_short_at_the_broker() -> None:
    from agents.batching import tune_fetch_actions

    fetcher = _Fetcher()
    fetcher._fetch_max_wait_ms = 50
    tune_fetch_actions(fetcher, frozenset({REQUESTS}), 5)
    assert fetcher._get_actions_per_node(None) == "actions"  # nothing buffered: the normal wait
    fetcher._records[P0] = object()  # interactions buffered: left out of the fetch, no request waits on it
    fetcher._get_actions_per_node(None)
    fetcher._records[R0] = object()  # a request buffered: its partition is left out, so the fetch must come back soon
    fetcher._get_actions_per_node(None)
    del fetcher._records[R0]
    fetcher._get_actions_per_node(None)
    assert [wait for wait, _ in fetcher.built_with] == [50, 50, 5, 50]
    longer = _Fetcher()
    longer._fetch_max_wait_ms = 3
    tune_fetch_actions(longer, frozenset({REQUESTS}), 5)
    longer._records[R0] = object()
    longer._get_actions_per_node(None)
    assert longer.built_with == [(3, False)]  # never longer than the normal wait
    unset = _Fetcher()
    unset._fetch_max_wait_ms = 50
    tune_fetch_actions(unset, frozenset({REQUESTS}), None)
    unset._records[R0] = object()
    unset._get_actions_per_node(None)
    assert unset.built_with == [(50, False)]


def test_a_node_whose_fetch_already_finished_does_not_look_busy() -> None:
    # aiokafka's routine can see its fetch task done (and drop it) before the task's done-callback took the node out
    # of _in_flight: built then, no fetch went out and the routine slept 0.2 s with nothing pending.
    from agents.batching import tune_fetch_actions

    fetcher = _Fetcher()
    tune_fetch_actions(fetcher, frozenset(), None)
    fetcher._in_flight.add(1)
    fetcher._pending_tasks = {_Task(done=False)}  # a fetch still running: the node is busy
    fetcher._get_actions_per_node(None)
    fetcher._pending_tasks = {_Task(done=True)}  # finished, its callback not run yet
    fetcher._get_actions_per_node(None)
    fetcher._in_flight.add(1)
    fetcher._pending_tasks = set()  # finished and already dropped from the pending tasks
    fetcher._get_actions_per_node(None)
    assert [busy for _, busy in fetcher.built_with] == [True, False, False]


def test_the_consumer_thread_tunes_the_fetch_actions_with_the_apps_settings(monkeypatch) -> None:
    from types import SimpleNamespace

    from agents.batching import PromptFetchConsumerThread

    def start(fetcher: _Fetcher, latency_topics: frozenset[str]) -> None:
        async def started(self) -> None:  # type: ignore[no-untyped-def]
            self._consumer = SimpleNamespace(_fetcher=fetcher)

        monkeypatch.setattr(aiokafka_driver.AIOKafkaConsumerThread, "on_start", started)
        thread = object.__new__(PromptFetchConsumerThread)
        thread.app = SimpleNamespace(prefetch_backoff_s=None, fetch_max_wait_s=0.05,
                                     fetch_max_wait_requests_held_s=0.002, latency_topics=latency_topics)
        asyncio.run(thread.on_start())

    served, plain = _Fetcher(), _Fetcher()
    start(served, frozenset({REQUESTS}))
    start(plain, frozenset())
    for fetcher in (served, plain):
        fetcher._records[R0] = object()
        fetcher._in_flight.add(1)  # stale: nothing pending
        fetcher._get_actions_per_node(None)
    assert (served.built_with, plain.built_with) == ([(2, False)], [(50, False)])


def test_a_fetcher_without_the_backoff_stops_the_start_loudly(monkeypatch) -> None:
    with pytest.raises(RuntimeError, match="_prefetch_backoff"):
        _start_thread(monkeypatch, 0.01, object())
    with pytest.raises(RuntimeError, match="_fetch_max_wait_ms"):
        _start_thread(monkeypatch, None, object(), app_fetch_wait=0.02)


# ---------------------------------------------------------------------------------------------- the queue bound
REQUESTS = "requests"
R0 = TP(REQUESTS, 0)


def test_queued_records_count_until_acked_processed_or_skipped_and_an_old_generation_stops_counting(
        consumer: BatchingConsumer) -> None:
    consumer.app.consumer_generation_id = 1  # type: ignore[misc]
    first, second, third = batch(0, 4), batch(5, 7), batch(8, 9)
    for queued in (first, second, third):
        consumer._queue(queued)
    assert consumer.queued_records == 10
    assert consumer.ack_processed(first) and consumer.queued_records == 5
    assert second.ack(consumer) is False  # skipped by Faust's iterator: never processed, not queued any more
    assert consumer.queued_records == 2
    newer = batch(10, 12, generation=2)
    consumer._queue(newer)
    consumer.app.consumer_generation_id = 2  # type: ignore[misc]  # a rebalance: the iterator skips generation 1
    assert consumer.queued_records == 3
    consumer._queue(third)  # the same batch handed over again counts once
    consumer.app.consumer_generation_id = 1  # type: ignore[misc]
    assert consumer.queued_records == 2


OTHER = TP("changelog", 0)  # a topic outside the bulk ones (a table's changelog) is fetched as before


def fetching(consumer: BatchingConsumer, **bounds: int) -> list[tuple[set, float]]:
    """The consumer of an app with bulk and request topics and these bounds, assigned P0, R0 and OTHER; returns the
    list its fetches are recorded in (partitions, timeout)."""
    app = consumer.app
    app.batch_topics = frozenset({TOPIC, REQUESTS})  # type: ignore[attr-defined]
    app.latency_topics = frozenset({REQUESTS})  # type: ignore[attr-defined]
    for name, value in bounds.items():
        setattr(app, name, value)
    app.consumer_generation_id = 1  # type: ignore[misc]
    consumer._get_active_partitions = lambda: {P0, R0, OTHER}  # type: ignore[method-assign]
    calls: list[tuple[set, float]] = []

    async def getmany(active_partitions: set, timeout: float) -> dict:
        calls.append((set(active_partitions), timeout))
        return {}

    consumer._getmany = getmany  # type: ignore[method-assign]
    return calls


def test_a_saturated_consumer_fetches_only_requests_and_looks_again_soon(consumer: BatchingConsumer) -> None:
    calls = fetching(consumer, max_queued_records=5)
    other = OTHER
    loop = asyncio.get_event_loop()
    held = batch(0, 3)  # alive, as a batch in the agent's queue is (the tally is by object identity)
    consumer._queue(held)  # 4 queued, under the bound
    loop.run_until_complete(consumer._next_records(1.0))
    assert calls == [({R0}, 0), ({P0, R0, other}, 1.0)] and consumer.saturated_fetches == 0
    calls.clear()
    queued = batch(4, 4)
    consumer._queue(queued)  # 5: the bound
    loop.run_until_complete(consumer._next_records(1.0))
    assert calls == [({R0}, 0), ({R0, other}, 0.01)] and consumer.saturated_fetches == 1
    calls.clear()
    consumer.ack_processed(queued)
    loop.run_until_complete(consumer._next_records(1.0))
    assert calls[-1] == ({P0, R0, other}, 1.0)


def request_batch(first: int, last: int, generation: int = 1) -> RecordBatch:
    records = [SourceRecord(REQUESTS, 0, o, 1_000, b"k", b"v", None) for o in range(first, last + 1)]
    return RecordBatch(R0, records, generation)


def test_requests_in_flight_are_counted_apart_from_the_bulk_records(consumer: BatchingConsumer) -> None:
    consumer.app.consumer_generation_id = 1  # type: ignore[misc]
    bulk, requests = batch(0, 9), request_batch(0, 2)
    consumer._queue(bulk)
    consumer._queue(requests, urgent=True)
    assert (consumer.queued_records, consumer.queued_requests) == (10, 3)
    assert consumer.ack_processed(requests)
    assert (consumer.queued_records, consumer.queued_requests) == (10, 0)
    newer = request_batch(3, 4, generation=2)
    consumer._queue(newer, urgent=True)
    consumer.app.consumer_generation_id = 2  # type: ignore[misc]  # a rebalance: generation 1 stops counting
    assert (consumer.queued_records, consumer.queued_requests) == (0, 2)


def test_with_enough_requests_in_flight_the_consumer_fetches_the_rest_and_looks_again_soon(
        consumer: BatchingConsumer) -> None:
    """A flood of requests waits at the broker once `max_queued_requests` are in flight, so handing over the next
    one never blocks the consumer loop (and the interactions behind it); both bounds at once leave only the topics
    outside them."""
    calls = fetching(consumer, max_queued_records=5, max_queued_requests=3)
    other = OTHER
    loop = asyncio.get_event_loop()
    in_flight = request_batch(0, 1)
    consumer._queue(in_flight, urgent=True)  # 2 requests: under the bound
    loop.run_until_complete(consumer._next_records(1.0))
    assert calls == [({R0}, 0), ({P0, R0, other}, 1.0)] and consumer.saturated_request_fetches == 0
    calls.clear()
    more = request_batch(2, 2)
    consumer._queue(more, urgent=True)  # 3: the bound
    loop.run_until_complete(consumer._next_records(1.0))
    assert calls == [({P0, other}, 0.01)] and consumer.saturated_request_fetches == 1
    calls.clear()
    bulk = batch(0, 4)
    consumer._queue(bulk)  # the bulk bound too: only the changelog is fetched
    loop.run_until_complete(consumer._next_records(1.0))
    assert calls == [({other}, 0.01)] and (consumer.saturated_fetches, consumer.saturated_request_fetches) == (1, 2)
    calls.clear()
    consumer.ack_processed(more)
    consumer.ack_processed(bulk)
    loop.run_until_complete(consumer._next_records(1.0))
    assert calls == [({R0}, 0), ({P0, R0, other}, 1.0)]

"""The agents' logic without a broker: the request handler, the pair refresher, the knowledge syncer and the model
watcher, each built from fakes of what the composition root (streams/app.py) injects."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents.health import Health
from agents.knowledge_sync import KnowledgeSync
from agents.pair_refresh import ModelWatcher, PairRefresher
from agents.recommender import RequestHandler
from agents.serving import Loaders, Serving
from models.clusters import Cluster, ClusterSet
from models.pair_table import PairPrediction, fingerprint, pair_owner
from models.recommend import FALLBACK, LLM, TABLE
from streams.metrics import Metrics
from streams.records import RecommendationRequest
from streams.settings import Settings

PARTITIONS = 4


def _clusters() -> ClusterSet:
    sizes = {"c1": 3, "c2": 3, "c3": 4, "c4": 2}
    items = {f"{cid}-{i}": cid for cid, n in sizes.items() for i in range(n)}
    return ClusterSet(version="c4-test", clusters={cid: Cluster(cid, f"name {cid}", ("kw",), n)
                                                   for cid, n in sizes.items()}, item_to_cluster=items)


def _settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {"interactions_partitions": PARTITIONS, "llm_timeout_s": 2.0,
                              "llm_max_queue_wait_s": 30.0, "pair_refresh_min_interval_s": 30.0}
    return Settings(**{**values, **changes})


class FakeKnowledge:
    """The knowledge store's read side: top next clusters per pair, trending clusters, a version."""

    def __init__(self, top_next: dict[tuple[str, str], list[tuple[str, int]]], trending: list[str]) -> None:
        self.top = top_next
        self.trend = trending
        self.version = "k1"
        self.refreshed = 0
        self.threads: set[str] = set()

    def top_next(self, c1: str, c2: str, n: int) -> list[tuple[str, int]]:
        self.threads.add(threading.current_thread().name)
        return self.top.get((c1, c2), [])[:n]

    def trending(self, n: int, exclude: Any = ()) -> list[tuple[str, int, float]]:
        return [(c, 1, 1.0) for c in self.trend if c not in set(exclude)][:n]

    def knowledge_version(self) -> str:
        return self.version

    def all_top_next(self, n: int) -> dict[tuple[str, str], list[tuple[str, int]]]:
        return {pair: rows[:n] for pair, rows in self.top.items()}

    def refresh(self) -> None:
        self.refreshed += 1


class FakePairs:
    def __init__(self) -> None:
        self.upserted: list[PairPrediction] = []
        self.stored: dict[str, dict[tuple[str, str], PairPrediction]] = {}
        self.fail_upserts = 0
        self.loads: list[float | None] = []

    def load(self, model_version: str | None = None, since: float | None = None
             ) -> dict[str, dict[tuple[str, str], PairPrediction]]:
        self.loads.append(since)
        return self.stored

    def upsert(self, rows: list[PairPrediction]) -> int:
        if self.fail_upserts:
            self.fail_upserts -= 1
            raise OSError("lancedb is away")
        self.upserted.extend(rows)
        return len(rows)


class FakePredictor:
    """The LLM: answers `novel` for every pair (after `delay_s`), counts its calls."""

    def __init__(self, version: str, novel: str = "c3", delay_s: float = 0.0) -> None:
        self.model_version = version
        self.identity = SimpleNamespace(label=version)
        self.novel = novel
        self.delay_s = delay_s
        self.calls: list[tuple[str, str]] = []
        self.closed = False

    def predict(self, pair: tuple[str, str], knowledge: Any) -> Any:
        self.calls.append(pair)
        if self.delay_s:
            time.sleep(self.delay_s)
        return SimpleNamespace(cluster_id=self.novel, elapsed_s=0.001)

    def candidate_log_probs(self, pair: tuple[str, str], knowledge: Any) -> dict[str, float]:
        """The scored form ("llm-x-sequence" rows): `novel` far ahead of every other cluster outside the pair."""
        self.predict(pair, knowledge)
        return {c: 0.0 if c == self.novel else -8.0 for c in _clusters().clusters if c not in pair}

    def close(self) -> None:
        self.closed = True


def _serving(settings: Settings, knowledge: FakeKnowledge, pairs: FakePairs, predictor: FakePredictor | None,
             metrics: Metrics, **executors: Any) -> Serving:
    def load_predictor(path: str) -> FakePredictor:
        if predictor is None:
            raise FileNotFoundError(path)
        return predictor

    loaders = Loaders(knowledge=lambda: knowledge, pairs=lambda: pairs, sequence=lambda: None,  # type: ignore[arg-type,return-value]
                      predictor=load_predictor, current_model_path=lambda: "base.gguf")  # type: ignore[arg-type]
    return Serving(settings, _clusters(), loaders, metrics, **executors)


def _row(pair: tuple[str, str], novel: str, version: str, top_next: list[tuple[str, int]], updated_at: float,
         scored: bool = True) -> PairPrediction:
    """A stored row; `scored` (the default, as `novel_choice` "llm-x-sequence" writes them): with the distribution."""
    scores = tuple((c, 0.0 if c == novel else -8.0) for c in _clusters().clusters if c not in pair) if scored else ()
    return PairPrediction(c1=pair[0], c2=pair[1], novel=novel, model_version=version, knowledge_version="k0",
                          fingerprint=fingerprint(top_next, pair), top_next=tuple(top_next), updated_at=updated_at,
                          scores=scores)


class FakeStates:
    """The partition state's read side the request handler uses: a user's clusters ("t") and items ("i")."""

    def __init__(self, users: dict[str, dict[str, list[str]]]) -> None:
        self.users = users

    def partition(self, partition: int) -> Any:
        return SimpleNamespace(user=self.users.get)


def _request(user: str = "u1", k: int = 2) -> RecommendationRequest:
    return RecommendationRequest(request_id=f"r-{user}", user_id=user, ts=1.0, k=k)


def _count(counter: Any, *labels: str) -> float:
    return (counter.labels(*labels) if labels else counter)._value.get()


# ------------------------------------------------------------------------------------------- request handler
def test_the_handler_answers_from_the_pair_table_then_the_llm_then_the_fallback() -> None:
    async def scenario() -> None:
        settings, metrics = _settings(), Metrics()
        knowledge = FakeKnowledge({("c1", "c2"): [("c4", 9), ("c3", 2)]}, trending=["c3"])
        predictor = FakePredictor("llm-a:0001", novel="c3")
        io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="injected-io")
        serving = _serving(settings, knowledge, FakePairs(), predictor, metrics, io_executor=io)
        await serving.start()
        states = FakeStates({"u1": {"t": ["c1", "c2"], "i": ["c3-0"]}, "u2": {"t": ["c2"], "i": []}})
        handler = RequestHandler(settings, states, serving, metrics)  # type: ignore[arg-type]

        miss = orjson.loads(await handler.answer(_request("u1"), partition=0, waited_s=0.0))
        assert (miss["source"], miss["novel_cluster"]["id"]) == (LLM, "c3") and predictor.calls == [("c1", "c2")]
        assert miss["model_version"] == "llm-a:0001|none" and miss["knowledge_version"] == "k1"
        assert [i["item_id"] for i in miss["items"]] == ["c3-1", "c3-2"]  # the user's own item is never offered
        assert [r.pair for r in serving.pending_rows] == [("c1", "c2")]  # for the refresher to store

        hit = orjson.loads(await handler.answer(_request("u1"), partition=0, waited_s=0.0))
        assert hit["source"] == TABLE and predictor.calls == [("c1", "c2")]  # the row answered, no second call

        cold = orjson.loads(await handler.answer(_request("u2"), partition=0, waited_s=0.0))
        assert cold["source"] == FALLBACK and cold["novel_cluster"]["id"] == "c3"  # trending, outside the history
        assert cold["model_version"] == "llm-a:0001|none"
        assert [_count(metrics.recommendations_out, s) for s in (TABLE, LLM, FALLBACK)] == [1, 1, 1]
        assert knowledge.threads and all(t.startswith("injected-io") for t in knowledge.threads)  # reads off the loop
        serving.close()

    asyncio.run(scenario())


class FakeSequenceModel:
    """The sequence model: every user's next item is most likely in cluster `likely`."""

    def __init__(self, likely: str) -> None:
        self.item_ids = tuple(_clusters().item_to_cluster)
        self.index = {item: k + 1 for k, item in enumerate(self.item_ids)}
        self.likely = likely
        self.version = "seq-fake"

    def score_batch(self, histories: Any) -> Any:
        import torch

        row = [-1e9] + [10.0 if _clusters().item_to_cluster[i] == self.likely else 0.0 for i in self.item_ids]
        return torch.tensor([row] * len(histories))

    def top_k(self, *args: Any, **kwargs: Any) -> Any:
        from models.sequence.recommender import SequenceRecommender

        return SequenceRecommender.top_k(self, *args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("novel_choice", ["llm-x-sequence", "llm"])
def test_a_scored_row_is_multiplied_by_the_users_sequence_mass(novel_choice: str) -> None:
    from models.recommend import ClusterMass

    async def scenario() -> None:
        settings, metrics = _settings(novel_choice=novel_choice), Metrics()
        serving = _serving(settings, FakeKnowledge({}, trending=[]), FakePairs(), None, metrics)
        await serving.start()
        serving.sequence = FakeSequenceModel(likely="c4")  # type: ignore[assignment]
        serving.mass = ClusterMass(serving.sequence, serving.clusters)  # type: ignore[arg-type]
        serving.cache.current_version = "m1"
        # the LLM is sure of c3 (c4 at e^-8) -- at T = 1 the user's strong pull to c4 still wins the product
        serving.cache.put(_row(("c1", "c2"), "c3", "m1", [], updated_at=1.0))
        states = FakeStates({"u1": {"t": ["c1", "c2"], "i": ["c4-0"]}})
        handler = RequestHandler(settings, states, serving, metrics)  # type: ignore[arg-type]
        answer = orjson.loads(await handler.answer(_request("u1"), partition=0, waited_s=0.0))
        expected = "c4" if novel_choice == "llm-x-sequence" else "c3"
        assert (answer["source"], answer["novel_cluster"]["id"]) == (TABLE, expected)
        assert answer["items"] and all(i["item_id"].startswith(expected) and i["item_id"] != "c4-0"
                                       for i in answer["items"])
        serving.close()

    asyncio.run(scenario())


def test_a_request_queued_too_long_or_an_llm_too_slow_gets_the_fallback() -> None:
    async def scenario() -> None:
        settings, metrics = _settings(llm_timeout_s=0.2), Metrics()
        knowledge = FakeKnowledge({("c1", "c2"): [("c4", 9)]}, trending=[])
        predictor = FakePredictor("llm-a:0001", novel="c3", delay_s=1.0)
        serving = _serving(settings, knowledge, FakePairs(), predictor, metrics)
        await serving.start()
        handler = RequestHandler(settings, FakeStates({}), serving, metrics)  # type: ignore[arg-type]

        late = await handler.choose(["c1", "c2"], waited_s=settings.llm_max_queue_wait_s + 1)
        assert (late.source, late.novel) == (FALLBACK, "c4") and predictor.calls == []
        assert _count(metrics.llm_failures, "backlog") == 1

        slow = await handler.choose(["c1", "c2"], waited_s=0.0)
        assert (slow.source, slow.novel) == (FALLBACK, "c4") and _count(metrics.llm_failures, "timeout") == 1
        assert serving.cache.lookup(("c1", "c2")) is None  # a timed-out call leaves no row behind
        await asyncio.wait_for(serving.llm_free_for_refresh.wait(), timeout=5)  # once the call really ended
        serving.close()

    asyncio.run(scenario())


def test_without_an_llm_misses_are_answered_by_the_fallback_and_say_why() -> None:
    async def scenario() -> None:
        settings, metrics = _settings(), Metrics()
        serving = _serving(settings, FakeKnowledge({}, ["c4"]), FakePairs(), None, metrics)
        await serving.start()
        assert serving.predictor is None and "FileNotFoundError" in (serving.llm_error or "")
        choice = await RequestHandler(settings, FakeStates({}), serving, metrics).choose(  # type: ignore[arg-type]
            ["c1", "c2"], waited_s=0.0)
        assert (choice.source, choice.novel, choice.model_version) == (FALLBACK, "c4", "none|none")
        serving.close()

    asyncio.run(scenario())


# --------------------------------------------------------------------------------------------- pair refresher
def _refresher(settings: Settings, serving: Serving, metrics: Metrics, owned: set[int], now: list[float],
               lag: float = 0.0) -> PairRefresher:
    return PairRefresher(settings, serving, metrics, owned=lambda: owned, lag=lambda: lag, clock=lambda: now[0])


def test_the_refresher_picks_its_partitions_missing_or_stale_pairs_busiest_first() -> None:
    settings, metrics = _settings(), Metrics()
    serving = _serving(settings, FakeKnowledge({}, []), FakePairs(), None, metrics)
    serving.cache.current_version = "m1"
    now = [1000.0]
    refresher = _refresher(settings, serving, metrics, owned=set(), now=now)
    mine = sorted(pair for pair, owner in refresher.owner.items() if owner == 0)
    assert mine and all(pair_owner(pair, PARTITIONS) == 0 for pair in mine)
    fresh, stale, recent, missing = mine[0], mine[1], mine[2], mine[3:]
    knowledge = {fresh: [("c9", 1)], stale: [("c9", 5)], recent: [("c9", 7)]}
    serving.cache.put(_row(fresh, "c3", "m1", [("c9", 1)], updated_at=0.0))  # same fingerprint: up to date
    serving.cache.put(_row(stale, "c3", "m1", [("c8", 1)], updated_at=0.0))  # knowledge changed long ago
    serving.cache.put(_row(recent, "c3", "m1", [("c8", 1)], updated_at=now[0] - 1))  # changed, re-inferred 1 s ago

    due = refresher.due({0}, knowledge, now[0])
    assert due == [stale, *sorted(missing)]  # busiest first, then by pair; the recent row waits its interval
    assert fresh not in refresher.first_seen and stale in refresher.first_seen
    assert refresher.due({1}, knowledge, now[0]) and not set(refresher.due({1}, knowledge, now[0])) & set(mine)
    serving.close()


@pytest.mark.parametrize("novel_choice", ["llm-x-sequence", "llm"])
def test_a_row_of_the_other_kind_is_re_inferred_after_a_novel_choice_change(novel_choice: str) -> None:
    settings, metrics = _settings(novel_choice=novel_choice), Metrics()
    serving = _serving(settings, FakeKnowledge({}, []), FakePairs(), None, metrics)
    serving.cache.current_version = "m1"
    refresher = _refresher(settings, serving, metrics, owned=set(), now=[1000.0])
    scored_pair, plain_pair = sorted(pair for pair, owner in refresher.owner.items() if owner == 0)[:2]
    serving.cache.put(_row(scored_pair, "c3", "m1", [], updated_at=0.0, scored=True))
    serving.cache.put(_row(plain_pair, "c3", "m1", [], updated_at=0.0, scored=False))
    due = refresher.due({0}, {}, 1000.0)
    # same model, same knowledge: only the row whose kind the deployment no longer serves is stale
    assert (plain_pair in due, scored_pair in due) == ((True, False) if novel_choice == "llm-x-sequence"
                                                      else (False, True))
    serving.close()


def test_the_refresher_re_infers_a_changed_pair_and_stores_the_rows() -> None:
    async def scenario() -> None:
        settings, metrics = _settings(pair_refresh_interval_s=0.05), Metrics()
        pairs, predictor = FakePairs(), FakePredictor("m1", novel="c4")
        clusters = _clusters()
        owned_pair = next(p for p in [("c1", "c2"), ("c2", "c1"), ("c1", "c3"), ("c3", "c1")]
                          if pair_owner(p, PARTITIONS) == pair_owner(("c1", "c2"), PARTITIONS))
        partition = pair_owner(owned_pair, PARTITIONS)
        knowledge = FakeKnowledge({owned_pair: [("c3", 4)]}, trending=[])
        serving = _serving(settings, knowledge, pairs, predictor, metrics)
        await serving.start()
        mine = {pair for pair in [(a, b) for a in clusters.clusters for b in clusters.clusters if a != b]
                if pair_owner(pair, PARTITIONS) == partition}
        for pair in mine - {owned_pair}:  # every other pair of the partition is up to date
            serving.cache.put(_row(pair, "c1", "m1", [], updated_at=0.0))
        serving.cache.put(_row(owned_pair, "c1", "m1", [("c2", 1)], updated_at=0.0))  # inferred from older knowledge
        now = [1000.0]
        refresher = _refresher(settings, serving, metrics, owned={partition}, now=now)
        task = asyncio.ensure_future(refresher.run())
        try:
            for _ in range(200):
                if pairs.upserted:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
        assert predictor.calls == [owned_pair]
        assert [(r.pair, r.novel, r.fingerprint) for r in pairs.upserted] == [(owned_pair, "c4", ("c3",))]
        assert serving.cache.current(owned_pair).novel == "c4"
        assert _count(metrics.pair_inferences, "changed") == 1 and knowledge.refreshed >= 1
        serving.close()

    asyncio.run(scenario())


def test_a_failed_store_keeps_the_rows_and_a_failed_merge_is_read_again() -> None:
    async def scenario() -> None:
        settings, metrics = _settings(), Metrics()
        pairs = FakePairs()
        serving = _serving(settings, FakeKnowledge({}, []), pairs, None, metrics)
        await serving.start()
        now = [1000.0]
        refresher = _refresher(settings, serving, metrics, owned=set(), now=now)
        row = _row(("c1", "c2"), "c3", "m1", [], updated_at=now[0])
        serving.pending_rows.append(row)
        pairs.fail_upserts = 1
        await refresher.flush()
        assert serving.pending_rows == [row] and pairs.upserted == []  # still serving, written next time
        await refresher.flush()
        assert serving.pending_rows == [] and pairs.upserted == [row]

        since = refresher.merged_since
        pairs.load = lambda model_version=None, since=None: (_ for _ in ()).throw(OSError("away"))  # type: ignore[method-assign]
        now[0] += 100
        await refresher.merge_other_writers()
        assert refresher.merged_since == since  # the rows written meanwhile are asked for again
        pairs.load = FakePairs.load.__get__(pairs)  # type: ignore[method-assign]
        pairs.stored = {"m0": {("c2", "c1"): _row(("c2", "c1"), "c4", "m0", [], updated_at=5.0)}}
        await refresher.merge_other_writers()
        assert refresher.merged_since == now[0] - 60.0 and pairs.loads[-1] == since
        assert serving.cache.lookup(("c2", "c1")).novel == "c4"  # another writer's row now serves here
        serving.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------- knowledge syncer
@dataclass
class FakePartitionState:
    counts: dict[str, Any] = field(default_factory=dict)
    watermark: float = 0.0
    changed_pairs: set[tuple[str, str]] = field(default_factory=set)
    trends_changed: bool = False


class FakeStore:
    def __init__(self) -> None:
        self.written: list[tuple[int, set[tuple[str, str]]]] = []
        self.fail = 0
        self.released: list[int] = []
        self.threads: set[str] = set()

    def prepare(self, partition: int, counts: Any, watermark: float, pairs: set[tuple[str, str]]) -> Any:
        return (partition, set(pairs))

    def write_many(self, updates: list[Any]) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail:
            self.fail -= 1
            raise OSError("object store timeout")
        self.written.extend(updates)

    def release_partition(self, partition: int) -> None:
        self.released.append(partition)


def test_the_syncer_writes_a_rounds_changed_partitions_at_once_from_its_thread_and_retries_a_failure() -> None:
    async def scenario() -> None:
        metrics, health, store = Metrics(), Health(), FakeStore()
        held = {0: FakePartitionState(changed_pairs={("c1", "c2")}), 1: FakePartitionState(),
                2: FakePartitionState(trends_changed=True)}
        states = SimpleNamespace(held=lambda: held)
        opened = []
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knowledge-writer")
        sync = KnowledgeSync(states, lambda: opened.append(1) or store, executor, metrics, health)  # type: ignore[arg-type]

        store.fail = 1  # the round's one write fails: every partition's changes are kept for the next round
        assert await sync.sync() == 0
        assert store.written == [] and held[0].changed_pairs == {("c1", "c2")} and held[2].trends_changed
        assert sync.failures == 1 and health.send_retries == 1 and _count(metrics.knowledge_sync_failures) == 1

        assert await sync.sync() == 2 and store.written == [(0, {("c1", "c2")}), (2, set())]  # partition 1: no change
        assert held[0].changed_pairs == set() and not held[2].trends_changed
        assert await sync.sync() == 0 and store.written == [(0, {("c1", "c2")}), (2, set())]  # nothing changed
        assert opened == [1] and store.threads and all(t.startswith("knowledge-writer") for t in store.threads)
        sync.release([0, 2])
        assert store.released == [0, 2]
        executor.shutdown()

    asyncio.run(scenario())


def test_a_store_that_fails_to_open_is_retried_at_the_next_round_without_stopping_the_worker() -> None:
    # Seen: two threads of a worker opening LanceDB on a fresh data dir raced (a commit conflict in create_table); the
    # sync's timer raised and the whole worker stopped.
    async def scenario() -> None:
        metrics, health, store = Metrics(), Health(), FakeStore()
        held = {0: FakePartitionState(changed_pairs={("c1", "c2")})}
        attempts = []

        def open_store() -> FakeStore:
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("lance error: Incompatible transaction")
            return store

        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="knowledge-writer")
        sync = KnowledgeSync(SimpleNamespace(held=lambda: held), open_store, executor, metrics, health)  # type: ignore[arg-type]
        assert await sync.sync() == 0
        assert held[0].changed_pairs == {("c1", "c2")} and sync.failures == 1 and health.send_retries == 1
        assert await sync.sync() == 1 and store.written == [(0, {("c1", "c2")})] and len(attempts) == 2
        executor.shutdown()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------- model watcher
class FakeLoader:
    def __init__(self) -> None:
        self.release: Any = None
        self.fresh: Any = None
        self.fail_load = False
        self.checked: list[Any] = []

    def _done(self, value: Any = None, error: BaseException | None = None) -> Future:
        future: Future = Future()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
        return future

    def submit_check(self, identity: Any) -> Future:
        self.checked.append(identity)
        return self._done(self.release)

    def submit_load(self, release: Any) -> Future:
        return self._done(error=OSError("bad gguf")) if self.fail_load else self._done(self.fresh)


def test_the_watcher_swaps_in_a_released_model_and_keeps_the_old_one_when_loading_fails() -> None:
    async def scenario() -> None:
        settings, metrics = _settings(), Metrics()
        old = FakePredictor("base:00")
        serving = _serving(settings, FakeKnowledge({}, []), FakePairs(), old, metrics)
        loader = FakeLoader()
        watcher = ModelWatcher(serving, loader, metrics)  # type: ignore[arg-type]
        assert await watcher.check() is False and loader.checked == []  # not serving yet: nothing to compare
        await serving.start()
        serving.cache.put(_row(("c1", "c2"), "c3", "base:00", [], updated_at=1.0))

        assert await watcher.check() is False and loader.checked == [old.identity]  # nothing released

        loader.release = SimpleNamespace(path="ft-1/model.gguf", identity=SimpleNamespace(label="ft-1:01"))
        loader.fail_load = True
        assert await watcher.check() is False and serving.predictor is old and not old.closed

        loader.fail_load, loader.fresh = False, FakePredictor("ft-1:01")
        assert await watcher.check() is True
        assert serving.predictor is loader.fresh and serving.cache.current_version == "ft-1:01" and old.closed
        assert serving.cache.lookup(("c1", "c2")).model_version == "base:00"  # the old row serves meanwhile
        assert serving.cache.current(("c1", "c2")) is None  # ... and is due for the refresher
        serving.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("lag", [0.0, 10_000.0])
def test_a_catching_up_worker_re_infers_nothing(lag: float) -> None:
    async def scenario() -> None:
        settings, metrics = _settings(pair_refresh_interval_s=0.05, pair_refresh_max_lag=2000), Metrics()
        predictor = FakePredictor("m1")
        pair = ("c1", "c2")
        serving = _serving(settings, FakeKnowledge({pair: [("c3", 1)]}, []), FakePairs(), predictor, metrics)
        await serving.start()
        refresher = _refresher(settings, serving, metrics, owned=set(range(PARTITIONS)), now=[1000.0], lag=lag)
        task = asyncio.ensure_future(refresher.run())
        try:
            for _ in range(40):  # two seconds: many scan intervals
                if predictor.calls:
                    break
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
        assert bool(predictor.calls) == (lag == 0.0)
        serving.close()

    asyncio.run(scenario())



def test_the_llm_thread_runs_nicer_than_the_event_loop_thread() -> None:
    import os

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def scenario(nice: int) -> tuple[int, int]:
        serving = _serving(Settings(llm_nice=nice), FakeKnowledge({}, []), FakePairs(), None, Metrics())
        try:
            return niceness(), await serving.llm(niceness)
        finally:
            serving.close()

    loop_nice, llm_nice = asyncio.run(scenario(7))
    assert llm_nice == min(19, loop_nice + 7)
    assert niceness() == loop_nice  # only the LLM's thread
    loop_nice, llm_nice = asyncio.run(scenario(0))
    assert llm_nice == loop_nice

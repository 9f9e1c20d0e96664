"""Serving decisions (models/recommend.py), user profiles (models/partition_state.py), request validation, the pair
table (models/pair_table.py) and its in-memory cache (agents/serving.PairCache)."""

from __future__ import annotations

import orjson
import pytest

from agents.serving import PairCache
from models.clusters import Cluster, ClusterSet
from models.pair_bulk import bulk_order
from models.pair_table import (
    PairPrediction,
    PairTable,
    all_pairs,
    fingerprint,
    pair_owner,
)
from models.partition_state import PartitionState
from models.recommend import (
    FALLBACK,
    TABLE,
    fallback_cluster,
    grounded_items,
    recommendation,
)
from streams.records import InteractionEvent, RecommendationRequest, SourcedEvent
from streams.settings import Settings
from streams.validation import Rejection, validate_request

SETTINGS = Settings(recent_items_kept=3)


def clusters() -> ClusterSet:
    sizes = {"c1": 5, "c2": 9, "c3": 2, "c4": 9}
    items = {f"{cid}-{i}": cid for cid, n in sizes.items() for i in range(n)}
    return ClusterSet(version="c4-test",
                      clusters={cid: Cluster(cid, f"name {cid}", ("kw",), n) for cid, n in sizes.items()},
                      item_to_cluster=items)


# ---------------------------------------------------------------------------------------------- serving decisions
def test_fallback_takes_top_next_then_trending_then_the_largest_cluster_never_the_history() -> None:
    cs = clusters()
    assert fallback_cluster(["c1", "c2"], [("c2", 9), ("c3", 4)], ["c4"], cs) == "c3"
    assert fallback_cluster(["c1", "c2"], [("c2", 9), ("zz", 4)], ["c1", "c4"], cs) == "c4"  # unknown id skipped
    assert fallback_cluster(["c1"], [], [], cs) == "c2"  # largest; ties by id (c2 before c4)
    assert fallback_cluster(["c2"], [], [], cs) == "c4"
    with pytest.raises(ValueError, match="nothing novel"):
        fallback_cluster(["c1", "c2", "c3", "c4"], [], [], cs)


def test_items_without_a_sequence_model_are_the_clusters_unseen_items() -> None:
    members = [f"c3-{i}" for i in range(2)] + ["c3-9"]
    items = grounded_items(None, members, recent_items=["c3-0", "c1-1"], k=5)
    assert [i.item_id for i in items] == ["c3-1", "c3-9"]


def test_a_recommendation_refuses_a_cluster_from_the_history() -> None:
    request = RecommendationRequest("r1", "u1", 1.0)
    made = recommendation(request, ["c1", "c2"], "c3", clusters(), [], TABLE, "m", "k", produced_at=2.0)
    assert made.novel_cluster.name == "name c3" and made.produced_at == 2.0 and made.history_clusters == ["c1", "c2"]
    with pytest.raises(ValueError, match="history"):
        recommendation(request, ["c1", "c2"], "c2", clusters(), [], FALLBACK, "m", "k")
    with pytest.raises(ValueError, match="source"):
        recommendation(request, ["c1", "c2"], "c3", clusters(), [], "magic", "m", "k")


# ---------------------------------------------------------------------------------------------------- profiles
def event(item: str, value: float = 5.0, n: int = 0) -> InteractionEvent:
    return InteractionEvent(f"e{n}", "u1", item, 1_000.0 + n, "rating", value)


def profile_state(**overrides) -> PartitionState:
    state = PartitionState({}, lambda item: None, SETTINGS.model_copy(update=overrides))
    state.recover()
    return state


def test_a_profile_keeps_the_latest_items_and_ignores_redeliveries() -> None:
    state = profile_state()
    for offset, item in enumerate(["a", "b", "c", "b", "d"]):
        state.apply(SourcedEvent(event(item, n=offset), 0, offset))
    assert state.user("u1")["i"] == ["c", "b", "d"] and state.user("u1")["n"] == 5  # "b" moved up, capped at 3
    assert state.apply(SourcedEvent(event("x", n=9), 0, 4)) == "duplicate"  # the same offset again: a redelivery
    state.apply(SourcedEvent(event("x", 1.0, n=9), 0, 5))
    assert state.user("u1")["n"] == 5  # not positive


def test_auto_requests_fire_on_every_nth_positive_engagement() -> None:
    state = profile_state(auto_request_every=3)
    events = [SourcedEvent(event(f"i{n}", 1.0 if n == 2 else 5.0, n=n), 0, n) for n in range(8)]
    due = state.apply_batch(events).requests_due
    assert [s.offset for s in due] == [3, 6]  # the 3rd and 6th positive engagements (offset 2 is not positive)
    assert profile_state(auto_request_every=0).apply_batch(events).requests_due == []


# ---------------------------------------------------------------------------------------------- request validation
@pytest.mark.parametrize(("key", "value", "code"), [
    (b"u1", b"{", "malformed_json"),
    (b"u1", b"[1]", "not_an_object"),
    (b"u1", orjson.dumps({"user_id": "u1"}), "missing_field"),
    (b"u1", orjson.dumps({"request_id": 3, "user_id": "u1"}), "wrong_type"),
    (b"u1", orjson.dumps({"request_id": "r", "user_id": "u1", "k": 0}), "bad_value"),
    (b"u1", orjson.dumps({"request_id": "r", "user_id": "u1", "k": 2.5}), "wrong_type"),
    (b"u1", orjson.dumps({"request_id": "r", "user_id": "u1", "ts": "now"}), "wrong_type"),
    (b"u2", orjson.dumps({"request_id": "r", "user_id": "u1"}), "key_mismatch"),
    (b"u1", b"x" * 20_000, "oversized"),
    (b"u1", None, "malformed_json"),
])
def test_bad_requests_are_rejected_with_a_reason(key, value, code) -> None:
    result = validate_request(key, value)
    assert isinstance(result, Rejection) and result.code == code, result


def test_a_good_request_gets_the_contract_defaults() -> None:
    assert validate_request(b"u1", orjson.dumps({"request_id": "r", "user_id": "u1"})) == \
        RecommendationRequest("r", "u1", 0.0, 10)


# ------------------------------------------------------------------------------------------------------ pair table
def row(pair, novel, model="m1", at=1.0, fp=("c3",)) -> PairPrediction:
    return PairPrediction(pair[0], pair[1], novel, model, "k@1.1", tuple(fp), tuple((c, 2) for c in fp), 5.0, at)


def test_pair_table_rows_round_trip_and_upsert_by_key(tmp_path) -> None:
    table = PairTable(str(tmp_path / "lancedb"), "c4-test", refresh_s=0.0)
    table.upsert([row(("c1", "c2"), "c3"), row(("c2", "c1"), "c4"), row(("c1", "c2"), "c4", model="m2")])
    table.upsert([row(("c1", "c2"), "c4", at=2.0, fp=("c4", "c3"))])
    loaded = table.load()
    assert loaded["m1"][("c1", "c2")] == row(("c1", "c2"), "c4", at=2.0, fp=("c4", "c3"))
    assert loaded["m1"][("c2", "c1")].novel == "c4" and loaded["m2"][("c1", "c2")].novel == "c4"
    assert table.count() == 3
    assert PairTable(str(tmp_path / "lancedb"), "other", refresh_s=0.0).load() == {}  # versions kept apart
    table.upsert([row(("c1", "c2"), "c2", at=1.5)])  # an older write (another writer, late) does not win
    assert table.load()["m1"][("c1", "c2")].novel == "c4"
    assert set(table.load(updated_since=1.5)["m1"]) == {("c1", "c2")}  # only rows updated since then
    assert table.load(updated_since=2.5) == {}


def test_the_cache_serves_the_current_model_first_and_an_older_one_meanwhile() -> None:
    cache = PairCache()
    cache.put(row(("c1", "c2"), "c3", model="old", at=1.0))
    cache.current_version = "new"
    assert cache.lookup(("c1", "c2")).model_version == "old"  # hot swap: the old answer serves until re-inferred
    assert cache.current(("c1", "c2")) is None
    cache.put(row(("c1", "c2"), "c4", model="new", at=2.0))
    assert cache.lookup(("c1", "c2")).novel == "c4"
    cache.put(row(("c1", "c2"), "c3", model="new", at=1.5))  # an older write never overwrites a newer one
    assert cache.lookup(("c1", "c2")).novel == "c4" and cache.size() == 1


def test_fingerprints_owners_and_bulk_order() -> None:
    cs = clusters()
    assert fingerprint([("c1", 5), ("c3", 4), ("c4", 1)], ("c1", "c2")) == ("c3", "c4")
    pairs = all_pairs(cs)
    assert len(pairs) == 12 and all(a != b for a, b in pairs)
    owners = {pair: pair_owner(pair, 4) for pair in pairs}
    assert set(owners.values()) <= set(range(4)) and owners == {p: pair_owner(p, 4) for p in pairs}
    order = bulk_order(cs, {("c3", "c4"): [("c1", 9)], ("c2", "c1"): [("c3", 2), ("c4", 1)]})
    assert order[:2] == [("c3", "c4"), ("c2", "c1")] and sorted(order) == sorted(pairs)


def test_deployments_sharing_a_lancedb_never_see_each_others_pair_rows(tmp_path) -> None:
    uri = str(tmp_path / "lancedb")
    staging = Settings(topic_prefix="staging.", app_id="explorer", lancedb_uri=uri)
    production = Settings(topic_prefix="prod.", app_id="explorer", lancedb_uri=uri)
    assert staging.deployment_id() != production.deployment_id()
    mine = PairTable.from_settings(staging, "c4-test", refresh_s=0.0)
    theirs = PairTable.from_settings(production, "c4-test", refresh_s=0.0)
    mine.upsert([row(("c1", "c2"), "c3", at=1.0)])
    theirs.upsert([row(("c1", "c2"), "c4", at=9.0), row(("c2", "c1"), "c4", at=9.0)])  # same key, newer
    assert {p: r.novel for p, r in mine.load()["m1"].items()} == {("c1", "c2"): "c3"}
    assert {p: r.novel for p, r in theirs.load()["m1"].items()} == {("c1", "c2"): "c4", ("c2", "c1"): "c4"}
    assert mine.count() == 1 and theirs.count() == 2
    assert mine.load(updated_since=5.0) == {}  # the other writers' merge reads only its own deployment


def test_deployment_ids_tell_every_prefix_and_app_id_pair_apart() -> None:
    from streams.settings import deployment_id

    ids = {deployment_id(p, a) for p, a in [("a.", "b"), ("", "a.b"), ("a", ".b"), ("", "a_b"), ("", "a b"),
                                            ("x.", "interest-explorer"), ("", "interest-explorer")]}
    assert len(ids) == 7
    assert all(set(i) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") for i in ids)


# ------------------------------------------------------------------------------------------------ the LLM thread
def _services():
    from agents.serving import Serving

    return Serving(SETTINGS, clusters(), loaders=None, metrics=None)  # type: ignore[arg-type]


def test_a_timed_out_request_keeps_the_llm_from_the_refresher_until_its_call_ends() -> None:
    """asyncio.wait_for cancels the request's wait, not the llama.cpp call running on the LLM thread: the
    refresher's gate stays shut until that call has really finished."""
    import asyncio
    import threading

    async def scenario() -> None:
        services = _services()
        running, finish, finished = threading.Event(), threading.Event(), threading.Event()

        def slow_call() -> str:
            running.set()
            finish.wait(10)
            finished.set()
            return "done"

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(services.llm_for_request(slow_call), timeout=0.2)
        assert running.is_set() and not finished.is_set()
        assert not services.llm_free_for_refresh.is_set()  # the call still runs: no refresh may start
        finish.set()
        await asyncio.wait_for(services.llm_free_for_refresh.wait(), timeout=10)
        assert finished.is_set() and services.requests_waiting_for_llm == 0
        services.llm_executor.shutdown()
        services.io_executor.shutdown()

    asyncio.run(scenario())


def test_a_request_that_times_out_while_queued_frees_the_llm_and_never_runs() -> None:
    import asyncio
    import threading

    async def scenario() -> None:
        services = _services()
        busy, release = threading.Event(), threading.Event()
        ran = []

        def occupy() -> None:  # a refresh already on the LLM thread
            busy.set()
            release.wait(10)

        background = asyncio.ensure_future(services.llm(occupy))
        await asyncio.get_running_loop().run_in_executor(None, busy.wait, 10)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(services.llm_for_request(ran.append, "queued"), timeout=0.2)
        await asyncio.wait_for(services.llm_free_for_refresh.wait(), timeout=5)  # cancelled before it started
        release.set()
        await background
        await asyncio.sleep(0)
        assert ran == [] and services.requests_waiting_for_llm == 0
        services.llm_executor.shutdown()
        services.io_executor.shutdown()

    asyncio.run(scenario())

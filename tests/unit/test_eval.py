"""Unit tests of the evaluation's protocol, metrics and strategy rules, on hand-made data."""

from __future__ import annotations

import itertools
import math

import pytest

from models.clusters import Cluster, ClusterSet
from models.evaluation import metrics as m
from models.evaluation.protocol import (
    Case,
    Horizon,
    UserEvents,
    busiest_pairs,
    case_at,
    collapsed,
    is_hit,
    is_item_hit,
    make_timeline,
    recent_items,
)
from models.evaluation.strategies import (
    CountArgmax,
    LlmPool,
    LlmTableStrategy,
    PointState,
    PopularNovel,
    RandomNovel,
    Snapshot,
)
from models.counts import DAY_S
from streams.movielens import Rating

DAY = float(DAY_S)


def clusters(n: int = 5) -> ClusterSet:
    return ClusterSet("v1", {f"i{k}": f"c{k}" for k in range(n)},
                      {f"c{k}": Cluster(f"c{k}", f"Name {k}", (), 10 - k) for k in range(n)})


def outcome(user: str, point: int, hit: bool, cluster: str = "c1", item_hit: bool = False) -> m.Outcome:
    return m.Outcome(user, point, cluster, hit, item_hit, True)


# ---------------------------------------------------------------------------------------------------- protocol
def test_collapsed_merges_consecutive_repeats_only() -> None:
    assert collapsed(["a", "a", "b", "a", "a", "c"]) == ["a", "b", "a", "c"]


def test_case_uses_the_last_two_collapsed_clusters_and_the_horizon() -> None:
    events = UserEvents(
        items=[(1.0, "x"), (2.0, "y"), (3.0, "z"), (10.0, "p"), (11.0, "q"), (12.0, "r")],
        positives=[(1.0, "x", "a"), (2.0, "y", "b"), (3.0, "z", "b"), (10.0, "p", "c"), (11.0, "q", "d"),
                   (12.0, "r", "e")])
    case = case_at("u", events, 0, 5.0, Horizon(events=2), kept=100)
    assert case is not None
    assert case.pair == ("a", "b")
    assert case.future_clusters == {"c", "d"}  # "e" is the third engagement: outside a 2-event horizon
    assert case.future_items == {"p", "q"}
    assert case.recent_items == ("x", "y", "z")


def test_case_horizon_in_days_cuts_later_engagements() -> None:
    events = UserEvents(items=[], positives=[(0.0, "x", "a"), (1.0, "y", "b"), (DAY, "p", "c"),
                                             (3 * DAY, "q", "d")])
    case = case_at("u", events, 0, 2.0, Horizon(events=10, days=2), kept=10)
    assert case is not None and case.future_clusters == {"c"}


def test_no_case_without_two_clusters_or_without_a_future() -> None:
    one_cluster = UserEvents(items=[], positives=[(1.0, "x", "a"), (2.0, "y", "a"), (9.0, "z", "b")])
    assert case_at("u", one_cluster, 0, 5.0, Horizon(10), 10) is None
    no_future = UserEvents(items=[], positives=[(1.0, "x", "a"), (2.0, "y", "b")])
    assert case_at("u", no_future, 0, 5.0, Horizon(10), 10) is None


def test_recent_items_move_a_reengaged_item_up_and_keep_the_last_n() -> None:
    items = [(1.0, "a"), (2.0, "b"), (3.0, "a"), (4.0, "c"), (9.0, "d")]
    assert recent_items(items, before=5.0, kept=10) == ("b", "a", "c")
    assert recent_items(items, before=5.0, kept=2) == ("a", "c")


def test_hits() -> None:
    case = Case("u", 0, ("a", "b"), (), frozenset({"c"}), frozenset({"i1", "i2"}))
    assert is_hit("c", case) and not is_hit("d", case)
    assert is_item_hit(["i9", "i2"], case) and not is_item_hit(["i9"], case)


def test_busiest_pairs_keeps_the_pairs_most_users_share() -> None:
    def case(user: str, pair: tuple[str, str]) -> Case:
        return Case(user, 0, pair, (), frozenset(), frozenset())

    cases = [case("1", ("a", "b")), case("2", ("a", "b")), case("3", ("c", "d")), case("4", ("e", "f")),
             case("5", ("e", "f")), case("6", ("e", "f"))]
    assert [c.user_id for c in busiest_pairs(cases, 2)] == ["1", "2", "4", "5", "6"]
    assert len(busiest_pairs(cases, None)) == 6


def test_timeline_points_are_whole_days_inside_the_post_split_period() -> None:
    ratings = [Rating("u", str(i), 5.0, 1_000 * DAY + i * DAY / 2) for i in range(100)]  # 50 days
    timeline = make_timeline(ratings, 0.5, 3)
    assert timeline.split_index == 50
    assert all(p % DAY == 0 for p in timeline.points)
    assert timeline.split_ts < timeline.points[0] < timeline.points[1] < timeline.points[2] < timeline.end_ts
    chunks = timeline.chunks(ratings)
    assert chunks[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    for (start, stop), point in zip(chunks, timeline.points):
        assert all(r.ts < point for r in ratings[start:stop]) and (stop == len(ratings) or ratings[stop].ts >= point)


def test_timeline_refuses_too_short_a_period() -> None:
    ratings = [Rating("u", str(i), 5.0, 1_000 * DAY + i) for i in range(10)]
    with pytest.raises(ValueError):
        make_timeline(ratings, 0.5, 3)


# ---------------------------------------------------------------------------------------------------- metrics
def test_rate_interval_value_and_bounds() -> None:
    outcomes = [outcome("a", 0, True), outcome("a", 1, True), outcome("b", 0, False), outcome("c", 0, False)]
    users = ["a", "b", "c"]
    interval = m.rate_interval(outcomes, m.resample_users(3, 500, 1), users)
    assert interval.value == pytest.approx(0.5)
    assert 0.0 <= interval.low <= 0.5 <= interval.high <= 1.0
    assert interval.low < 0.5 < interval.high  # three users, one of them a hitter: the interval is wide


def test_all_hits_give_a_degenerate_interval() -> None:
    outcomes = [outcome(u, 0, True) for u in "abcd"]
    interval = m.rate_interval(outcomes, m.resample_users(4, 200, 3), list("abcd"))
    assert (interval.value, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_bootstrap_resamples_users_not_rows() -> None:
    # one user with 9 hits, nine users with one miss each: by rows 50% of ... every resample keeps a user's rows
    # together, so some resamples have no hitter at all (rate 0) -- impossible if rows were drawn independently
    outcomes = [outcome("hitter", p, True) for p in range(9)] + [outcome(f"u{k}", 0, False) for k in range(9)]
    users = ["hitter"] + [f"u{k}" for k in range(9)]
    interval = m.rate_interval(outcomes, m.resample_users(len(users), 2000, 7), users)
    assert interval.value == pytest.approx(0.5)
    assert interval.low == 0.0


def test_paired_difference() -> None:
    users = list("abcdef")
    draws = m.resample_users(len(users), 500, 5)
    always = [outcome(u, 0, True) for u in users]
    never = [outcome(u, 0, False) for u in users]
    up = m.paired_difference(always, never, draws, users)
    assert (up.value, up.low, up.high) == (1.0, 1.0, 1.0) and up.excludes_zero()
    same = m.paired_difference(always, always, draws, users)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero()
    half = [outcome(u, 0, u in "abc") for u in users]
    mixed = m.paired_difference(half, never, draws, users)
    assert mixed.value == pytest.approx(0.5) and mixed.low < 0.5 < mixed.high


def test_paired_difference_needs_the_same_evaluations() -> None:
    with pytest.raises(ValueError):
        m.paired_difference([outcome("a", 0, True)], [outcome("b", 0, True)], m.resample_users(2, 100, 1), ["a", "b"])


def test_exploration_validity_and_rate_by_point() -> None:
    outcomes = [outcome("a", 0, True, "c1"), outcome("b", 0, False, "c2"), outcome("a", 1, False, "c1"),
                m.Outcome("b", 1, "c9", False, False, False)]
    assert m.exploration(outcomes, 40) == (3, 3 / 40)
    assert m.validity(outcomes) == 0.75
    assert m.rate_by_point(outcomes) == {0: 0.5, 1: 0.0}
    assert math.isnan(m.validity([]))


def test_exact_match_rate_counts_only_novel_cluster_names() -> None:
    names = {"c1": "Drama 90s", "c2": "Comedy 80s", "c3": "Horror"}
    answers = {("c1", "c2"): "Horror", ("c2", "c3"): "Horror", ("c1", "c3"): "Horror movies"}
    assert m.exact_match_rate(answers, names) == pytest.approx(1 / 3)  # in-history and not-a-name are misses


# ---------------------------------------------------------------------------------------------------- strategies
def state(point: int, top_next: dict, split: dict | None = None, model: str | None = None,
          trending: tuple[str, ...] = ()) -> PointState:
    now = Snapshot(top_next, trending, f"k{point}")
    return PointState(point, now, Snapshot(split if split is not None else top_next, trending, "k0"), model, 1.0, None)


def test_baselines() -> None:
    cs = clusters()
    pairs = [("c0", "c1"), ("c2", "c3")]
    knowledge = {("c0", "c1"): [("c0", 9), ("c4", 5), ("c2", 3)], ("c3", "c4"): [("c2", 50)]}
    s = state(0, knowledge, trending=("c3",))
    counted = CountArgmax(cs).answer(s, pairs)
    assert counted[("c0", "c1")] == "c4"  # c0 is in the pair: the top novel one wins
    assert counted[("c2", "c3")] == "c0"  # no knowledge, trending c3 is in the pair: the largest cluster
    popular = PopularNovel(cs).answer(s, pairs)
    assert popular == {("c0", "c1"): "c2", ("c2", "c3"): "c0"}  # c2 has 53 transitions into it
    randomly = RandomNovel(cs, seed=1)
    first, again = randomly.answer(s, pairs), RandomNovel(cs, seed=1).answer(s, pairs)
    assert first == again and all(first[p] not in p for p in pairs)


class FakePool(LlmPool):
    """Answers the first shown next cluster (or the first novel cluster) and records every call."""

    def __init__(self, cs: ClusterSet) -> None:
        super().__init__(None, cs, "base.gguf", threads=1)
        self.calls: list[tuple[str, tuple[str, str]]] = []

    def infer(self, path, pair, knowledge):  # type: ignore[no-untyped-def]
        self.calls.append((path, pair))
        shown = [c for c, _ in knowledge.top_next] if knowledge else []
        return (shown[0] if shown else next(c for c in self.clusters.clusters if c not in pair)), 0.5, 0.6


def test_llm_table_refresh_rules() -> None:
    cs = clusters()
    pool = FakePool(cs)
    pair = ("c0", "c1")
    stale = LlmTableStrategy("stale", "", pool, False, "split")
    rag = LlmTableStrategy("rag", "", pool, False, "stream")
    tuned = LlmTableStrategy("finetune", "", pool, True, "none")
    before = {pair: [("c2", 3)]}
    after = {pair: [("c3", 9), ("c2", 3)]}  # the pair's top next cluster changed
    for strategy in (stale, rag):
        assert strategy.answer(state(0, before), [pair]) == {pair: "c2"}
        strategy.answer(state(1, after, split=before), [pair])
    assert stale.rows[pair].cluster == "c2" and stale.ledger.inferences == 1  # never refreshed
    assert rag.rows[pair].cluster == "c3" and rag.ledger.inferences == 2  # re-inferred on the new fingerprint
    assert rag.ledger.pairs_changed == 1 and rag.ledger.cpu_s == pytest.approx(1.0)
    rag.answer(state(2, after), [pair])
    assert rag.ledger.inferences == 2  # same fingerprint: the row serves
    tuned.answer(state(0, before, model="ft1.gguf"), [pair])
    tuned.answer(state(1, after, model="ft1.gguf"), [pair])
    assert tuned.ledger.inferences == 1  # no knowledge in its prompt: only a new model refreshes
    tuned.answer(state(2, after, model="ft2.gguf"), [pair])
    assert tuned.ledger.inferences == 2 and tuned.ledger.model_updates == 1
    assert tuned.ledger.pairs_changed == 5 * 4  # a new model re-infers every ordered pair of the table
    assert ("ft2.gguf", pair) in pool.calls

"""Unit tests of the evaluation's protocol, metrics, strata, drift, strategies and inference engine, on hand-made
data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import orjson
import pytest

from models.clusters import Cluster, ClusterSet
from models.evaluation import inference
from models.evaluation import metrics as m
from models.evaluation.baselines import CountArgmax, CountBackoff, PopularNovel, RandomNovel, SequenceChoice
from models.evaluation.drift import drift, jaccard, top_next
from models.evaluation.inference import InferenceCache, InferenceEngine
from models.evaluation.interface import Answer, InferenceRequest, Inferred, PointState, Snapshot
from models.evaluation.protocol import (
    Case,
    Horizon,
    Positive,
    Timeline,
    UserEvents,
    all_cases,
    busiest_pairs,
    case_at,
    collapsed,
    is_hit,
    is_hit_at,
    is_item_hit,
    make_timeline,
    recent_items,
    request_cases,
)
from models.evaluation.strata import DENSE, IN_TOP3, OUTSIDE_TOP3, SPARSE, strata_of, support_bin
from models.evaluation.strategies import BASE, FINETUNE, LlmTableStrategy
from models.prompts import Knowledge
from models.counts import DAY_S
from streams.movielens import Rating

DAY = float(DAY_S)


def clusters(n: int = 5) -> ClusterSet:
    return ClusterSet("v1", {f"i{k}": f"c{k}" for k in range(n)},
                      {f"c{k}": Cluster(f"c{k}", f"Name {k}", (), 10 - k) for k in range(n)})


def outcome(user: str, point: int, hit: bool, cluster: str = "c1", item_hit: bool = False, **more) -> m.Outcome:
    return m.Outcome((user, point), user, point, cluster, hit, item_hit, True, **more)


def events(*positives: tuple[float, str, str]) -> UserEvents:
    """A user whose every interaction is a positive engagement (ts, item, cluster)."""
    return UserEvents(items=[(t, i) for t, i, _ in positives],
                      positives=[Positive(t, i, c, k) for k, (t, i, c) in enumerate(positives)])


def case(user: str = "u", pair: tuple[str, str] = ("c0", "c1"), future: frozenset[str] = frozenset({"c2"}),
         state: int = 1, next_novel: str = "c2", recent: tuple[str, ...] = ()) -> Case:
    return Case(user, state, "point", float(state), pair, recent, future, frozenset(), next_novel)


# ---------------------------------------------------------------------------------------------------- protocol
def test_collapsed_merges_consecutive_repeats_only() -> None:
    assert collapsed(["a", "a", "b", "a", "a", "c"]) == ["a", "b", "a", "c"]


def test_point_case_uses_the_last_two_collapsed_clusters_and_the_horizon() -> None:
    user = events((1.0, "x", "a"), (2.0, "y", "b"), (3.0, "z", "b"), (10.0, "p", "b"), (11.0, "q", "d"),
                  (12.0, "r", "e"))
    found = case_at("u", user, 1, 5.0, Horizon(events=2), kept=100)
    assert found is not None
    assert found.pair == ("a", "b") and found.anchor == "point" and found.state == 1
    assert found.future_clusters == {"b", "d"}  # "e" is the third engagement: outside a 2-event horizon
    assert found.next_novel == "d"  # "b" is in the pair: the first novel one is "d"
    assert found.future_items == {"p", "q"}
    assert found.recent_items == ("x", "y", "z")


def test_case_horizon_in_days_cuts_later_engagements() -> None:
    user = events((0.0, "x", "a"), (1.0, "y", "b"), (DAY, "p", "c"), (3 * DAY, "q", "d"))
    found = case_at("u", user, 1, 2.0, Horizon(events=10, days=2), kept=10)
    assert found is not None and found.future_clusters == {"c"}


def test_no_case_without_a_pair_or_without_a_novel_future() -> None:
    one_cluster = events((1.0, "x", "a"), (2.0, "y", "a"), (9.0, "z", "b"))
    assert case_at("u", one_cluster, 1, 5.0, Horizon(10), 10) is None
    no_future = events((1.0, "x", "a"), (2.0, "y", "b"))
    assert case_at("u", no_future, 1, 5.0, Horizon(10), 10) is None
    # the future only returns to the pair's clusters: every answer (always outside the pair) would miss
    only_back = events((1.0, "x", "a"), (2.0, "y", "b"), (9.0, "z", "a"), (9.5, "w", "b"))
    assert case_at("u", only_back, 1, 5.0, Horizon(10), 10) is None


def test_request_cases_follow_every_nth_positive_after_the_split() -> None:
    timeline = Timeline(split_index=0, split_ts=10.0, end_ts=100.0, points=(50.0,))
    user = events(*[(float(t), f"i{t}", c) for t, c in
                    [(1, "a"), (2, "b"), (11, "c"), (12, "d"), (20, "e"), (55, "f"), (56, "g"), (60, "h")]])
    found = request_cases("u", user, timeline, every=2, horizon=Horizon(2), kept=100)
    # 2nd positive (t=2) is before the split; 4th (t=12) serves from the split state, 6th (t=55) from point 1;
    # the 8th (t=60) has no future
    assert [(c.ts, c.state, c.anchor) for c in found] == [(12.0, 0, "request"), (55.0, 1, "request")]
    first = found[0]
    assert first.pair == ("c", "d")  # the triggering engagement is part of the history
    assert first.recent_items == ("i1", "i2", "i11", "i12")
    assert first.future_clusters == {"e", "f"} and first.next_novel == "e"


def test_validation_cases_are_the_month_before_the_split_and_never_see_past_it() -> None:
    from models.evaluation.pooling import validation_cases
    from streams.settings import Settings

    cut = 10 * DAY
    train = [Rating("u", f"i{k}", 5.0, ts) for k, ts in enumerate([1.0, 2.0, cut + 1, cut + 2])]  # test period: i4
    found = validation_cases(train, clusters().cluster_of, cut, Settings(), Horizon(10), request_every=1, kept=50)
    # triggers before the cut are no case; the last training engagement has no future inside the training period
    assert [(c.ts, c.pair, c.next_novel, c.state) for c in found] == [(cut + 1, ("c1", "c2"), "c3", 0)]
    assert found[0].future_clusters == {"c3"} and found[0].recent_items == ("i0", "i1", "i2")
    assert validation_cases([], clusters().cluster_of, cut, Settings(), Horizon(10), 1, 50) == []


def test_the_prior_at_the_cut_counts_only_the_days_before_it() -> None:
    from models.counts import AllCounts
    from models.evaluation.pooling import next_totals_before

    counts = AllCounts(daily={3: {("a", "b"): {"c": 2, "d": 1}}, 4: {("b", "c"): {"d": 5}}, 9: {("a", "b"): {"c": 7}}})
    assert next_totals_before(counts, 9) == {"c": 2, "d": 6}
    assert next_totals_before(counts, 4) == {"c": 2, "d": 1}


def test_the_sequence_weight_is_an_exponent_on_the_mass() -> None:
    from models.recommend import times_sequence_mass

    distribution, mass = {"a": 0.5, "b": 0.5}, {"a": 0.8, "b": 0.2}
    assert times_sequence_mass(distribution, mass) == pytest.approx({"a": 0.8, "b": 0.2})
    assert times_sequence_mass(distribution, mass, 2.0) == pytest.approx({"a": 0.64 / 0.68, "b": 0.04 / 0.68})
    assert times_sequence_mass(distribution, mass, 0.0) == pytest.approx(distribution)


def test_all_cases_holds_both_anchors_in_a_fixed_order() -> None:
    timeline = Timeline(split_index=0, split_ts=10.0, end_ts=100.0, points=(30.0, 60.0))
    users = {"v": events((1.0, "x", "a"), (2.0, "y", "b"), (40.0, "z", "c"), (70.0, "w", "d")),
             "u": events((1.0, "p", "a"), (11.0, "q", "b"), (35.0, "r", "c"), (65.0, "s", "d"))}
    cases = all_cases(users, timeline, Horizon(10), 10, request_every=2)
    assert [(c.state, c.anchor, c.user_id) for c in cases] == [
        (0, "request", "u"), (1, "point", "u"), (1, "point", "v"), (2, "point", "u"), (2, "point", "v")]
    # v's 2nd positive is before the split, both users' 4th have no future


def test_recent_items_move_a_reengaged_item_up_and_keep_the_last_n() -> None:
    items = [(1.0, "a"), (2.0, "b"), (3.0, "a"), (4.0, "c"), (9.0, "d")]
    assert recent_items(items, before=5.0, kept=10) == ("b", "a", "c")
    assert recent_items(items, before=5.0, kept=2) == ("a", "c")


def test_hits() -> None:
    found = Case("u", 0, "point", 0.0, ("a", "b"), (), frozenset({"c", "e"}), frozenset({"i1", "i2"}), "c")
    assert is_hit("c", found) and not is_hit("d", found)
    assert is_hit_at(["d", "f", "e"], found, 3) and not is_hit_at(["d", "f", "g", "e"], found, 3)
    assert is_item_hit(["i9", "i2"], found) and not is_item_hit(["i9"], found)


def test_busiest_pairs_keeps_the_pairs_most_cases_share_per_state() -> None:
    cases = [case("1", ("a", "b")), case("2", ("a", "b")), case("3", ("c", "d")), case("4", ("e", "f")),
             case("5", ("e", "f")), case("6", ("e", "f")), case("7", ("c", "d"), state=2)]
    assert [c.user_id for c in busiest_pairs(cases, 2)] == ["1", "2", "4", "5", "6", "7"]
    assert len(busiest_pairs(cases, None)) == 7


def test_timeline_points_are_whole_days_inside_the_post_split_period() -> None:
    ratings = [Rating("u", str(i), 5.0, 1_000 * DAY + i * DAY / 2) for i in range(100)]  # 50 days
    timeline = make_timeline(ratings, 0.5, 3)
    assert timeline.split_index == 50
    assert all(p % DAY == 0 for p in timeline.points)
    assert timeline.split_ts < timeline.points[0] < timeline.points[1] < timeline.points[2] < timeline.end_ts
    chunks = timeline.chunks(ratings)
    assert chunks[0] == (0, 50) and len(chunks) == 4 and all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    for (start, stop), point in zip(chunks[1:], timeline.points, strict=True):
        assert all(r.ts < point for r in ratings[start:stop]) and (stop == len(ratings) or ratings[stop].ts >= point)
    assert timeline.state_at(timeline.split_ts) == 0
    assert timeline.state_at(timeline.points[0]) == 1 and timeline.state_at(timeline.points[0] - 1) == 0
    assert timeline.state_at(timeline.end_ts) == 3


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
    # one user with 9 hits, nine users with one miss each: every resample keeps a user's rows together, so some
    # resamples have no hitter at all (rate 0) -- impossible if rows were drawn independently
    outcomes = [outcome("hitter", p, True) for p in range(9)] + [outcome(f"u{k}", 0, False) for k in range(9)]
    users = ["hitter"] + [f"u{k}" for k in range(9)]
    interval = m.rate_interval(outcomes, m.resample_users(len(users), 2000, 7), users)
    assert interval.value == pytest.approx(0.5)
    assert interval.low == 0.0


def test_a_stratum_interval_ignores_resamples_without_its_cases() -> None:
    # one user of twenty has the stratum's only case, a hit: resamples without that user say nothing about the
    # stratum; counting them as rate 0 would put the interval's low end at 0
    users = [f"u{k}" for k in range(20)]
    only = [outcome("u0", 0, True)]
    interval = m.rate_interval(only, m.resample_users(len(users), 500, 3), users)
    assert (interval.value, interval.low, interval.high) == (1.0, 1.0, 1.0)


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


def test_paired_difference_needs_the_same_cases() -> None:
    with pytest.raises(ValueError):
        m.paired_difference([outcome("a", 0, True)], [outcome("b", 0, True)], m.resample_users(2, 100, 1), ["a", "b"])


def test_metrics_undefined_for_a_strategy_are_left_out_not_zero() -> None:
    users = ["a", "b"]
    draws = m.resample_users(2, 200, 1)
    ranked = [outcome("a", 0, False, hit3=True, log_loss=0.5), outcome("b", 0, False, hit3=False, log_loss=1.5)]
    single = [outcome("a", 0, True), outcome("b", 0, False)]
    assert m.rate_interval(ranked, draws, users, "hit3").value == pytest.approx(0.5)
    assert m.rate_interval(ranked, draws, users, "log_loss").value == pytest.approx(1.0)
    assert math.isnan(m.rate_interval(single, draws, users, "hit3").value)
    assert not m.defined(single, "hit3") and m.defined(ranked, "log_loss")
    assert math.isnan(m.paired_difference(single, ranked, draws, users, "hit3").value)


def test_log_loss_is_floored() -> None:
    assert m.log_loss({"c1": 0.5, "c2": 0.5}, "c1") == pytest.approx(math.log(2))
    assert m.log_loss({"c1": 1.0}, "c2") == pytest.approx(-math.log(m.LOG_LOSS_FLOOR))


def test_exploration_validity_rate_by_point_head_and_novelty() -> None:
    outcomes = [outcome("a", 0, True, "c1"), outcome("b", 0, False, "c2"), outcome("a", 1, False, "c1"),
                m.Outcome(("b", 1), "b", 1, "c9", False, False, False)]
    assert m.exploration(outcomes, 40) == (3, 3 / 40)
    assert m.validity(outcomes) == 0.75
    assert m.rate_by_point(outcomes) == {0: 0.5, 1: 0.0}
    assert math.isnan(m.validity([]))
    totals = {"c1": 7, "c2": 3, "c3": 0}
    assert m.popularity_head(totals, 2) == {"c1", "c2"}
    bits = m.novelty_bits(totals, ["c1", "c2", "c3"])
    assert bits["c1"] == pytest.approx(-math.log2(8 / 13)) and bits["c3"] > bits["c2"] > bits["c1"]


def test_exact_match_rate_counts_only_novel_cluster_names() -> None:
    names = {"c1": "Drama 90s", "c2": "Comedy 80s", "c3": "Horror"}
    answers = [(("c1", "c2"), "Horror"), (("c2", "c3"), "Horror"), (("c1", "c3"), "Horror movies")]
    assert m.exact_match_rate(answers, names) == pytest.approx(1 / 3)  # in-history and not-a-name are misses


def test_an_answer_is_consistent() -> None:
    assert Answer.ranked(["c2", "c3"], {"c2": 0.7, "c3": 0.3}).cluster == "c2"
    with pytest.raises(ValueError):
        Answer("c2", ("c3", "c2"))
    with pytest.raises(ValueError):
        Answer("c2", (), {"c2": 0.7})


# ---------------------------------------------------------------------------------------------------- strata, drift
def test_strata_come_from_the_knowledge_not_from_any_answer() -> None:
    knowledge = Snapshot({("c0", "c1"): [("c0", 9), ("c4", 5), ("c2", 3), ("c3", 2), ("c5", 1)]}, (), "k")
    inside = strata_of(case(next_novel="c3"), knowledge)
    assert inside == {"support": "≥20", "sparse": DENSE, "retrieved": IN_TOP3,
                      "anchor": "point"}  # c0 is in the pair: c4 c2 c3
    outside = strata_of(case(next_novel="c5"), knowledge)
    assert outside["retrieved"] == OUTSIDE_TOP3
    unseen = strata_of(case(pair=("c2", "c3")), knowledge)
    assert (unseen["support"], unseen["sparse"]) == ("0", SPARSE)
    few = Snapshot({("c0", "c1"): [("c4", 3), ("c2", 1)]}, (), "k")
    assert strata_of(case(next_novel="c2"), few)["sparse"] == SPARSE  # 4 transitions: below 5
    assert strata_of(case(next_novel="c2"), Snapshot({("c0", "c1"): [("c4", 3), ("c2", 2)]}, (), "k")
                     )["sparse"] == DENSE
    assert [support_bin(n) for n in (0, 1, 4, 5, 19, 20)] == ["0", "1–4", "1–4", "5–19", "5–19", "≥20"]


def test_drift_jaccard() -> None:
    assert jaccard(frozenset("ab"), frozenset("bc")) == pytest.approx(1 / 3)
    assert top_next([("a", 1), ("p", 9), ("b", 3), ("c", 3)], ("p", "q"), k=2) == {"b", "c"}  # p is in the pair
    before = {("p", "q"): [("a", 10), ("b", 10)], ("p", "r"): [("a", 1)], ("q", "q"): [("a", 5)]}
    after = {("p", "q"): [("a", 12), ("c", 10), ("b", 9)], ("p", "r"): [("a", 2)], ("r", "p"): [("b", 1)]}
    result = drift(before, after, k=2)
    assert result["pairs"] == 2 and result["new_pairs"] == 1  # (q, q) is no pair; (r, p) is new
    assert result["mean_jaccard"] == pytest.approx((1 / 3 + 1.0) / 2, abs=1e-4)
    assert result["weighted_jaccard"] == pytest.approx((20 / 3 + 1.0) / 21, abs=1e-4)
    assert result["dense_pairs"] == 1 and result["dense_mean_jaccard"] == pytest.approx(1 / 3, abs=1e-4)
    assert result["unchanged_share"] == 0.5


# ---------------------------------------------------------------------------------------------------- baselines
def state(point: int, top_next: dict, split: dict | None = None, models: dict | None = None,
          trending: tuple[str, ...] = ()) -> PointState:
    now = Snapshot(top_next, trending, f"k{point}")
    return PointState(point, now, Snapshot(split if split is not None else top_next, trending, "k0"),
                      models if models is not None else {BASE: "base.gguf"}, 1.0)


def answers(strategy, s: PointState, cases: list[Case]) -> list[Answer]:  # type: ignore[no-untyped-def]
    return strategy.answer(s, cases, {})


def test_count_popular_and_random() -> None:
    cs = clusters()
    cases = [case(pair=("c0", "c1")), case(pair=("c2", "c3"))]
    knowledge = {("c0", "c1"): [("c0", 9), ("c4", 5), ("c2", 3)], ("c3", "c4"): [("c2", 50)]}
    s = state(0, knowledge, trending=("c3",))
    counted = answers(CountArgmax(cs), s, cases)
    assert counted[0].cluster == "c4"  # c0 is in the pair: the top novel one wins
    assert counted[0].ranking[:2] == ("c4", "c2") and set(counted[0].ranking) == {"c2", "c3", "c4"}
    assert counted[1].cluster == "c0"  # no knowledge, trending c3 is in the pair: the largest cluster
    assert counted[0].distribution is None
    popular = answers(PopularNovel(cs), s, cases)
    assert [a.cluster for a in popular] == ["c2", "c0"]  # c2 has 53 transitions into it
    assert max(popular[0].distribution, key=popular[0].distribution.get) == "c2"
    first, again = answers(RandomNovel(cs, seed=1), s, cases), answers(RandomNovel(cs, seed=1), s, cases)
    assert first == again and all(a.cluster not in c.pair for a, c in zip(first, cases, strict=True))
    assert all(p == pytest.approx(1 / 3) for p in first[0].distribution.values())


def test_backoff_backs_off_from_pair_to_last_cluster_to_popularity() -> None:
    cs = clusters(6)
    knowledge = {("c0", "c1"): [("c2", 1), ("c3", 1)],  # a sparse pair, tied
                 ("c4", "c1"): [("c3", 8), ("c5", 2)],  # another pair into the same last cluster c1
                 ("c4", "c5"): [("c2", 30)]}  # popularity: c2 30 + 1, c3 9, c5 2
    s = state(0, knowledge)
    backoff = CountBackoff(cs, k=1.0, m=1.0)
    tied, unseen, nothing = answers(backoff, s, [case(pair=("c0", "c1")), case(pair=("c5", "c1")),
                                                 case(pair=("c1", "c3"))])
    assert tied.cluster == "c3"  # the tie is broken by the last cluster's counts (c1 -> c3 more often)
    assert unseen.cluster == "c3"  # no transitions out of (c5, c1): the last cluster's distribution
    assert nothing.cluster == "c2"  # no pair, no last cluster c3 anywhere: popularity
    for answer in (tied, unseen, nothing):
        assert sum(answer.distribution.values()) == pytest.approx(1.0)
        assert min(answer.distribution.values()) > 0  # smoothed: every novel cluster has a chance
    assert answers(CountArgmax(cs), s, [case(pair=("c0", "c1"))])[0].cluster == "c2"  # argmax keeps the store's tie


class FakeSequence:
    """Three items per cluster; the user's scores favour i0 (cluster c0), then items of c3."""

    item_ids = tuple(f"i{k}" for k in range(6))
    index = {item: k + 1 for k, item in enumerate(item_ids)}

    def score_batch(self, histories):  # type: ignore[no-untyped-def]
        import torch

        return torch.tensor([[-1e9, 5.0, 0.0, 0.0, 4.0, 3.0, 1.0]] * len(histories))


def test_sequence_choice_is_the_cluster_of_its_top_item_outside_the_pair() -> None:
    import torch

    from models.evaluation.grounding import SequenceScores

    cs = ClusterSet("v1", {"i0": "c0", "i1": "c1", "i2": "c2", "i3": "c3", "i4": "c3", "i5": "c4"},
                    {f"c{k}": Cluster(f"c{k}", f"Name {k}", (), 3) for k in range(5)})
    scores = SequenceScores(FakeSequence(), cs, k=2)
    cases = [case(pair=("c1", "c0"), recent=("i1",)), case(pair=("c1", "c2"), recent=("i0",), user="v")]
    scores.prepare(cases)
    first, second = answers(SequenceChoice(cs, scores), state(0, {}), cases)
    assert first.ranking == ("c3", "c4", "c2")  # i0 (c0) is in the pair's cluster, i1 was had
    weights = torch.softmax(torch.tensor([4.0, 3.0, 1.0, 0.0]), 0)  # i3, i4 (c3), i5 (c4), i2 (c2)
    assert first.distribution["c3"] == pytest.approx(float(weights[0] + weights[1]), rel=1e-6)
    assert second.cluster == "c3"  # the user had i0: it is excluded, not its cluster (c0 is not in this pair)
    assert second.distribution["c0"] == 0.0
    assert scores.items(cases[0], "c3") == ["i3", "i4"]



def test_backoff_times_sequence_is_the_normalised_product_and_the_llm_can_be_a_third_expert() -> None:
    from models.evaluation.baselines import BackoffTimesSequence
    from models.evaluation.grounding import SequenceScores
    from models.evaluation.strategies import ScoredTableStrategy

    cs = ClusterSet("v1", {"i0": "c0", "i1": "c1", "i2": "c2", "i3": "c3", "i4": "c3", "i5": "c4"},
                    {f"c{k}": Cluster(f"c{k}", f"Name {k}", (), 3) for k in range(5)})
    scores = SequenceScores(FakeSequence(), cs, k=2)
    pair = ("c1", "c0")
    one = case(pair=pair, recent=("i1",))
    scores.prepare([one])
    knowledge = {pair: [("c4", 20), ("c3", 1)]}  # the counts favour c4, the user's items c3
    s = state(0, knowledge, models={FINETUNE: "ft.gguf"})
    backoff = CountBackoff(cs)
    counts = backoff.pair_answer(s, pair).distribution
    _, items = scores.clusters_for(one, ["c2", "c3", "c4"])
    product = {c: counts[c] * items[c] for c in counts}
    total = sum(product.values())
    answer = answers(BackoffTimesSequence(backoff, scores), s, [one])[0]
    assert answer.distribution == pytest.approx({c: v / total for c, v in product.items()})
    assert answer.cluster == max(product, key=product.__getitem__)
    assert answer.ranking == tuple(sorted(product, key=lambda c: -product[c]))
    # the hybrid's model as the third expert: a confident model moves the product's answer where both others hesitate
    model = {"c2": math.log(0.98), "c3": math.log(0.01), "c4": math.log(0.01)}
    third = ScoredTableStrategy("t", "", FINETUNE, "stream", 5, lambda path: "v", kind="scores",
                                combine="poe-sequence", backoff=backoff, sequence=scores)
    with_model = third._answer_of(one, s, {"scores": model})
    expected = {c: math.exp(model[c]) * product[c] for c in product}
    assert with_model.distribution == pytest.approx({c: v / sum(expected.values()) for c, v in expected.items()})
    with pytest.raises(ValueError, match="sequence"):
        ScoredTableStrategy("x", "", FINETUNE, "stream", 5, lambda path: "v", kind="scores", combine="poe-sequence",
                            backoff=backoff)._answer_of(one, s, {"scores": model})
    # the model alone in the counts' place, temperature-scaled: p ∝ p_model^(1/T) · p_sequence
    flat = ScoredTableStrategy("s", "", FINETUNE, "stream", 5, lambda path: "v", kind="scores", combine="sequence",
                               sequence=scores, temperature=4.0)._answer_of(one, s, {"scores": model})
    scaled = {c: math.exp(model[c] / 4.0) * items[c] for c in items}
    assert flat.distribution == pytest.approx({c: v / sum(scaled.values()) for c, v in scaled.items()})
    sharp = ScoredTableStrategy("s", "", FINETUNE, "stream", 5, lambda path: "v", kind="scores", combine="sequence",
                                sequence=scores)._answer_of(one, s, {"scores": model})
    assert sharp.cluster == "c2" and flat.cluster == max(scaled, key=scaled.__getitem__) == "c3"


def test_serving_chooses_and_grounds_as_the_evaluated_hybrid_seq() -> None:
    """models/recommend.llm_times_sequence (what a request does with a scored row) gives the evaluation's
    hybrid-seq answer and its grounded items, for an over-confident model and a calibrated one."""
    from models.evaluation.grounding import SequenceScores
    from models.evaluation.strategies import ScoredTableStrategy
    from models.recommend import ClusterMass, llm_times_sequence, members_by_cluster
    from models.sequence.recommender import SequenceRecommender

    class Sequence(FakeSequence):
        top_k = SequenceRecommender.top_k

    cs = ClusterSet("v1", {"i0": "c0", "i1": "c1", "i2": "c2", "i3": "c3", "i4": "c3", "i5": "c4"},
                    {f"c{k}": Cluster(f"c{k}", f"Name {k}", (), 3) for k in range(5)})
    sequence = Sequence()
    scores = SequenceScores(sequence, cs, k=2)
    one = case(pair=("c1", "c0"), recent=("i1",))
    scores.prepare([one])
    model = {"c2": math.log(0.98), "c3": math.log(0.01), "c4": math.log(0.01)}
    for temperature, expected in ((1.0, "c2"), (4.0, "c3")):
        evaluated = ScoredTableStrategy("s", "", FINETUNE, "stream", 5, lambda path: "v", combine="sequence",
                                        sequence=scores, temperature=temperature)._answer_of(one, state(0, {}),
                                                                                             {"scores": model})
        novel, items = llm_times_sequence(sequence, ClusterMass(sequence, cs), tuple(model.items()), temperature,
                                          members_by_cluster(cs), one.recent_items, 2)
        assert novel == evaluated.cluster == expected
        assert [i.item_id for i in items] == scores.items(one, novel)

# ---------------------------------------------------------------------------------------------------- LLM tables
class Recorder:
    """Plays the engine: answers the first shown next cluster (or the first novel cluster), counts calls."""

    def __init__(self, cs: ClusterSet) -> None:
        self.cs, self.calls, self.done = cs, [], {}

    def run(self, requests):  # type: ignore[no-untyped-def]
        out = self.done  # like the runner's: every result so far
        for r in requests:
            self.calls.append((r.model_path, r.pair))
            shown = [c for c, _ in r.top_next] if r.top_next else []
            out[r] = Inferred({"cluster": shown[0] if shown else next(c for c in self.cs.clusters
                                                                       if c not in r.pair)}, 0.5, 0.6)
        return out


def ask(strategy: LlmTableStrategy, engine: Recorder, s: PointState, cases: list[Case]) -> list[str]:
    inferred = engine.run(strategy.requests(s, cases))
    return [a.cluster for a in strategy.answer(s, cases, inferred)]


def test_llm_table_refresh_rules() -> None:
    cs = clusters()
    engine = Recorder(cs)
    pair = ("c0", "c1")
    one = [case(pair=pair)]

    def table(name: str, role: str, knowledge: str) -> LlmTableStrategy:
        return LlmTableStrategy(name, "", role, knowledge, 5, lambda path: f"v-{path}")

    stale, rag, tuned = table("stale", BASE, "split"), table("rag", BASE, "stream"), table("ft", FINETUNE, "none")
    before = {pair: [("c2", 3)]}
    after = {pair: [("c3", 9), ("c2", 3)]}  # the pair's top next cluster changed
    for strategy in (stale, rag):
        assert ask(strategy, engine, state(0, before), one) == ["c2"]
        ask(strategy, engine, state(1, after, split=before), one)
    assert stale.rows[pair].request.top_next == (("c2", 3),) and stale.ledger.inferences == 1  # never refreshed
    assert ask(rag, engine, state(2, after), one) == ["c3"]
    assert rag.ledger.inferences == 2  # re-inferred on the new fingerprint, then the row serves
    assert rag.ledger.pairs_changed == 1 and rag.ledger.cpu_s == pytest.approx(1.0)
    ask(tuned, engine, state(0, before, models={FINETUNE: "ft1.gguf"}), one)
    ask(tuned, engine, state(1, after, models={FINETUNE: "ft1.gguf"}), one)
    assert tuned.ledger.inferences == 1  # no knowledge in its prompt: only a new model refreshes
    ask(tuned, engine, state(2, after, models={FINETUNE: "ft2.gguf"}), one)
    assert tuned.ledger.inferences == 2 and tuned.ledger.model_updates == 1
    assert tuned.ledger.pairs_changed == 5 * 4  # a new model re-infers every ordered pair of the table
    assert ("ft2.gguf", pair) in engine.calls
    assert tuned.rows[pair].request.model_version == "v-ft2.gguf"
    with pytest.raises(RuntimeError):
        tuned.requests(state(3, after, models={BASE: "base.gguf"}), one)  # no fine-tuned model to answer with


def test_scored_tables_rank_by_the_model_and_by_its_product_with_the_counts() -> None:
    import math

    from models.evaluation.strategies import ScoredTableStrategy

    cs = clusters()
    pair = ("c0", "c1")
    # the model prefers c2 (0.5), then c3 (0.3), c4 (0.2); the counts say c3 (9) over c2 (1)
    scores = {"c2": math.log(0.5 * 0.9), "c3": math.log(0.3 * 0.9), "c4": math.log(0.2 * 0.9)}
    knowledge = {pair: [("c3", 9), ("c2", 1)]}
    s = state(0, knowledge, models={FINETUNE: "ft.gguf"})

    class Scorer:
        def run(self, requests):  # type: ignore[no-untyped-def]
            assert all(r.kind == "scores" and r.top_next == (("c3", 9), ("c2", 1)) for r in requests)
            return {r: Inferred({"scores": scores}, 0.5, 0.6) for r in requests}

    backoff = CountBackoff(cs)
    model, poe = (ScoredTableStrategy(name, "", FINETUNE, "stream", 5, lambda path: "v", kind="scores",
                                      combine=combine, backoff=backoff) for name, combine in (("m", "model"),
                                                                                              ("p", "poe")))
    by_model, by_poe = (strategy.answer(s, [case(pair=pair)], Scorer().run(strategy.requests(s, [case(pair=pair)])))[0]
                        for strategy in (model, poe))
    assert by_model.ranking == ("c2", "c3", "c4")
    assert by_model.distribution == pytest.approx({"c2": 0.5, "c3": 0.3, "c4": 0.2})  # renormalised over valid names
    counts = backoff.pair_answer(s, pair).distribution
    expected = {c: by_model.distribution[c] * counts[c] for c in counts}
    total = sum(expected.values())
    assert by_poe.distribution == pytest.approx({c: v / total for c, v in expected.items()})
    assert by_poe.cluster == "c3"  # the counts' 9 to 1 outweigh the model's 5 to 3
    with pytest.raises(ValueError, match="back-off"):
        ScoredTableStrategy("x", "", FINETUNE, "stream", 5, lambda path: "v", kind="scores",
                            combine="poe")._answer_of(case(pair=pair), s, {"scores": scores})


def test_a_sampled_table_serves_seeded_draws_from_the_same_distribution() -> None:
    import math
    import random
    from collections import Counter

    from models.evaluation.strategies import ScoredTableStrategy, sampled

    pair = ("c0", "c1")
    scores = {"c2": math.log(0.6), "c3": math.log(0.3), "c4": math.log(0.1)}
    s = state(0, {pair: [("c3", 9)]}, models={FINETUNE: "ft.gguf"})

    def draws(seed: int) -> list[Answer]:
        strategy = ScoredTableStrategy("m", "", FINETUNE, "stream", 5, lambda path: "v", kind="scores",
                                       combine="model", sample_seed=seed)
        cases = [case(user=f"u{t}", pair=pair) for t in range(2000)]
        return [strategy._answer_of(c, s, {"scores": scores}) for c in cases]

    first = draws(7)
    assert [a.cluster for a in first] == [a.cluster for a in draws(7)]  # reproducible
    assert [a.cluster for a in first] != [a.cluster for a in draws(8)]
    served = Counter(a.cluster for a in first)
    assert served["c2"] / 2000 == pytest.approx(0.6, abs=0.04) and served["c4"] / 2000 == pytest.approx(0.1, abs=0.03)
    for answer in first:  # the distribution is the argmax strategy's; the ranking starts with the draw
        assert answer.distribution == pytest.approx({"c2": 0.6, "c3": 0.3, "c4": 0.1})
        assert sorted(answer.ranking) == ["c2", "c3", "c4"] and answer.ranking[0] == answer.cluster
    certain = Answer.ranked(["c2", "c3"], {"c2": 0.0, "c3": 1.0})  # a cluster without mass is never drawn
    assert {sampled(certain, random.Random(seed)).ranking for seed in range(50)} == {("c3", "c2")}


def test_a_sharpened_draw_weighs_the_distribution_raised_to_its_power() -> None:
    import random
    from collections import Counter

    from models.evaluation.strategies import sampled

    answer = Answer.ranked(["c2", "c3", "c4"], {"c2": 0.6, "c3": 0.3, "c4": 0.1})
    squared = Counter(sampled(answer, random.Random(seed), 2.0).cluster for seed in range(4000))
    # 0.36 : 0.09 : 0.01 of 0.46
    assert squared["c2"] / 4000 == pytest.approx(0.36 / 0.46, abs=0.03)
    assert squared["c4"] / 4000 == pytest.approx(0.01 / 0.46, abs=0.01)
    assert sampled(answer, random.Random(3), 2.0).distribution == answer.distribution  # reported unsharpened


def test_only_the_selected_llm_strategies_run() -> None:
    from streams.eval_run import EvalConfig
    from streams.settings import Settings

    config = EvalConfig.from_settings(Settings(eval_llm_strategies=["hybrid", "hybrid-poe"]))
    assert config.llm_strategies == ("hybrid", "hybrid-poe")
    assert EvalConfig.from_settings(Settings()).llm_strategies is None


# ---------------------------------------------------------------------------------------------------- inference
class FakePredictor:
    loads: list[str] = []

    def __init__(self, path: str) -> None:
        FakePredictor.loads.append(path)
        self.path = path

    def predict(self, pair, knowledge):  # type: ignore[no-untyped-def]
        from types import SimpleNamespace

        shown = [c for c, _ in knowledge.top_next] if knowledge else []
        return SimpleNamespace(cluster_id=shown[0] if shown else "c4")


def test_engine_dedupes_by_exact_prompt_and_reuses_its_cache_across_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(inference, "load_predictor", lambda settings, cs, path, threads, method: FakePredictor(path))
    cs = clusters()
    with_counts = Knowledge(top_next=[("c2", 3)], trending=["c3"])
    requests = [InferenceRequest.of("novel", "a.gguf", "va", ("c0", "c1"), with_counts),
                InferenceRequest.of("novel", "a.gguf", "va", ("c0", "c1"), Knowledge(top_next=[("c2", 3)],
                                                                                     trending=["c3"])),
                InferenceRequest.of("novel", "a.gguf", "va", ("c0", "c1"), None),
                InferenceRequest.of("novel", "b.gguf", "vb", ("c0", "c1"), None)]
    path = tmp_path / "cache.sqlite"
    engine = InferenceEngine(None, cs, InferenceCache(path), processes=0)
    done = engine.run(requests)
    assert [done[r].result["cluster"] for r in requests] == ["c2", "c2", "c4", "c4"]
    assert engine.stats.inferred == 3  # the first two are one prompt to one model
    assert engine.key(requests[2]) != engine.key(requests[3])  # another model identity, another inference
    again = InferenceEngine(None, cs, InferenceCache(path), processes=0)
    FakePredictor.loads.clear()
    redone = again.run(requests)
    assert again.stats.inferred == 0 and again.stats.cached == 3 and not FakePredictor.loads
    assert {r: redone[r].result for r in requests} == {r: done[r].result for r in requests}
    assert all(redone[r].cached for r in requests)
    renamed = InferenceRequest.of("novel", "elsewhere/a.gguf", "va", ("c0", "c1"), None)  # same model, moved
    assert again.key(renamed) == again.key(requests[2])


def test_engine_stops_between_chunks_when_asked(monkeypatch) -> None:
    import threading

    monkeypatch.setattr(inference, "load_predictor", lambda settings, cs, path, threads, method: FakePredictor(path))
    cs = clusters()
    requests = [InferenceRequest.of("novel", "a.gguf", "va", (a, b), None) for a in cs.clusters for b in cs.clusters
                if a != b]
    stop = threading.Event()
    stop.set()
    engine = InferenceEngine(None, cs, InferenceCache(None), processes=0)
    assert engine.run(requests, stop=stop) == {}
    assert len(engine.run(requests)) == len(requests) == engine.stats.inferred


def test_bootstrap_draws_are_reproducible() -> None:
    assert np.array_equal(m.resample_users(5, 10, 3), m.resample_users(5, 10, 3))


# ---------------------------------------------------------------------------------------------------- report
def test_report_writes_every_table_and_plot(tmp_path) -> None:
    from models.evaluation.report import PLOTS, write_report
    from models.evaluation.summary import StrategyResult, summarise
    from streams.eval_run import EvalConfig, EvalResult
    from streams.settings import Settings

    results = []
    for name, hits in (("rag", "ab"), ("count", "abc"), ("backoff", "abcd")):
        result = StrategyResult(name, name, "", name == "rag", True, None)
        for k, user in enumerate("abcdef"):
            strata = {"support": "≥20" if k % 2 else "0", "sparse": DENSE if k % 2 else SPARSE,
                      "retrieved": IN_TOP3, "anchor": "point"}
            result.outcomes.append(m.Outcome((user, 1), user, 1, f"c{k % 3}", user in hits, False, True,
                                             hit3=None if name == "rag" else True,
                                             log_loss=0.7 if name == "backoff" else None, novelty=2.0 + k,
                                             strata=strata))
        result.lags_s = [1.5]
        results.append(result)
    results.append(StrategyResult("finetune", "", "", True, False, "skipped: quick mode"))
    summarise(results, 40, 200, 1)
    rag = results[0]  # the LLM strategy is compared with the best LLM-free one too: backoff, 4 of 6 against 2
    assert rag.vs_best_free["against"] == "backoff" and rag.vs_best_free["hit"].value == pytest.approx(-1 / 3)
    odd = rag.strata["support"]["≥20"]  # users b, d, f: rag hits b, backoff b and d, count b
    assert odd["best_free"] == "backoff" and odd["vs_best_free"].value == pytest.approx(-1 / 3)
    assert not results[1].vs_best_free  # only LLM strategies
    config = EvalConfig.from_settings(Settings(), quick=True)
    totals = {"split": "s", "end": "e", "clusters": "c40", "sequence": "sq", "base_model": "/m/base.gguf",
              "cases": 6, "users": 6, "cases_by_anchor": {"point": 6, "request": 0},
              "users_by_anchor": {"point": 6, "request": 0}, "inference": {"requested": 3, "unique": 2,
              "cached": 0, "inferred": 2, "cpu_s": 1.0, "cpu_s_per_inference_p50": 0.5}, "phases_s": {"replay_s": 1.0},
              "run_key": "k", "code_version": "c", "git_commit": None, "settings": {"eval_seed": 2025},
              "wall_s": 1.0, "cpu_s_main": 1.0, "cpu_s_children": 0.0, "worker_cpu_s": 1.0, "all_pairs": 1560,
              "cache_dir": str(tmp_path / "cache")}
    drift_rows = {"points": [{"point": 1, "vs_split": drift({("a", "b"): [("c", 1)]}, {("a", "b"): [("c", 2)]}),
                              "vs_previous": drift({}, {})}], "monthly": []}
    paths = write_report(EvalResult(config, results, [], totals, drift_rows), tmp_path / "out")
    report = paths["report"].read_text()
    assert "| backoff | 0.667" in report and "| finetune | skipped: quick mode" in report
    assert "0 (n=3, 3 users)" in report and "≥20 (n=3, 3 users)" in report  # the strata tables
    assert "| rag | -0.333 [" in report and "vs backoff" in report  # against the best LLM-free strategy
    assert all(paths[name].read_bytes()[:4] == b"\x89PNG" for name in PLOTS)
    assert (tmp_path / "cache" / "runs" / "k.json").is_file()  # the results kept under the run key
    answers = [orjson.loads(line) for line in paths["answers"].read_bytes().splitlines()]
    assert len(answers) == sum(len(r.outcomes) for r in results)  # every answer of every strategy, once
    backoff = [a for a in answers if a["strategy"] == "backoff"]
    assert [a["hit"] for a in backoff] == [u in "abcd" for u in "abcdef"]
    assert backoff[1]["strata"]["sparse"] == DENSE and backoff[1]["log_loss"] == pytest.approx(0.7)


# ---------------------------------------------------------------------------------------------------- fine-tune cache
def test_a_cached_fine_tunes_key_follows_what_is_trained_not_how_fast_or_how_it_is_checked(tmp_path) -> None:
    from types import SimpleNamespace

    from models.evaluation.finetuning import BudgetedFineTuner
    from streams.settings import Settings

    def key(**overrides: object) -> str:
        settings = Settings(data_dir=tmp_path, **overrides)
        tuner = BudgetedFineTuner(settings, clusters(), tmp_path / "base.gguf", tmp_path, 240.0,
                                  base_version="base-v1")
        return tuner.cache_key(SimpleNamespace(examples=[]))

    reference = key()
    assert key(finetune_threads=7) == reference
    assert key(finetune_agreement_prompts=300, finetune_agreement_margin_nats=0.1) == reference
    assert key(finetune_lora_rank=4) != reference
    assert key(finetune_seed=99) != reference

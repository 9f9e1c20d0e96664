"""The partition state (models/partition_state.py, models/transitions.py) against the contract and the reference."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from models.counts import DAY_S, AllCounts, read_counts, window_counts, window_trends
from models.partition_state import DIRECT, REROUTED, PartitionState
from models.reference import reference_counts
from streams.records import InteractionEvent, SourcedEvent
from streams.settings import Settings

T0 = 1_000 * DAY_S  # a day boundary


def cluster_of(item_id: str) -> str | None:
    """Items are named after their cluster ("A", "A7", ...); items starting with "?" have no cluster."""
    return None if item_id.startswith("?") else item_id[0]


def ev(eid: str, item: str, ts: float, user: str = "u1", kind: str = "like", value: float | None = None):
    return InteractionEvent(event_id=eid, user_id=user, item_id=item, ts=ts, event_type=kind, value=value)


def settings(lateness: float = 3 * DAY_S, **extra: Any) -> Settings:
    return Settings(allowed_lateness_s=lateness, **extra)


class Changelog:
    """What a changelog partition receives: every batch's writes, in order, as JSON (so a later in-place edit of a
    value cannot hide in the log). A prefix of it is what a crash leaves."""

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes]] = []

    def write(self, writes: Sequence[tuple[str, Any]]) -> None:
        self.log.extend((key, orjson.dumps(value)) for key, value in writes)

    def recovered(self, length: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, raw in self.log[:length]:
            data[key] = orjson.loads(raw)
        return data


def new_state(store: dict[str, Any] | None = None, config: Settings | None = None, **kwargs: Any) -> PartitionState:
    state = PartitionState({} if store is None else store, cluster_of, config or settings(), **kwargs)
    state.recover()
    return state


def run(events, lateness: float = 3 * DAY_S, changelog: Changelog | None = None, **kwargs: Any
        ) -> tuple[PartitionState, list[str]]:
    """Each event its own batch, offsets 0.. of the direct source."""
    state = new_state(config=settings(lateness), **kwargs)
    changelog = changelog if changelog is not None else Changelog()
    outcomes = []
    for offset, event in enumerate(events):
        outcomes.append(state.apply(SourcedEvent(event, 0, offset)))
        changelog.write(state.finish())
    state.changelog = changelog  # type: ignore[attr-defined]
    return state, outcomes


def counts_of(state: PartitionState) -> AllCounts:
    counts = read_counts([state.store])
    assert read_counts([{**_as_store(state.counts)}]) == counts  # the in-memory index agrees with the keys
    return counts


def _as_store(counts: AllCounts) -> dict[str, Any]:
    store: dict[str, Any] = {}
    for (c1, c2), row in counts.total.items():
        for c3, n in row.items():
            store[f"t:{c1}|{c2}|{c3}"] = {"n": n}
    for day, bucket in counts.daily.items():
        for (c1, c2), row in bucket.items():
            for c3, n in row.items():
                store[f"d:{day}:{c1}|{c2}|{c3}"] = {"n": n}
    for day, row in counts.trends.items():
        for cluster, n in row.items():
            store[f"r:{day}:{cluster}"] = {"n": n}
    return store


def seq(clusters: str, start: float = T0, step: float = 60.0, user: str = "u1", prefix: str = "e"):
    return [ev(f"{prefix}{i:03d}", c, start + i * step, user) for i, c in enumerate(clusters)]


# --------------------------------------------------------------------------------------------------------------------
# hand-written examples from the contract
# --------------------------------------------------------------------------------------------------------------------


def test_repeats_collapse_and_one_transition_is_counted_at_its_c3_day():
    state, outcomes = run(seq("AABBBC"))
    assert outcomes == ["applied"] * 6
    counts = counts_of(state)
    assert counts.total == {("A", "B"): {"C": 1}}
    assert counts.daily == {T0 // DAY_S: {("A", "B"): {"C": 1}}}
    assert counts.trends == {T0 // DAY_S: {"A": 2, "B": 3, "C": 1}}
    assert counts == reference_counts(seq("AABBBC"), cluster_of, settings())


def test_three_distinct_clusters_are_required():
    assert counts_of(run(seq("ABA"))[0]).total == {}
    assert counts_of(run(seq("ABAC"))[0]).total == {("B", "A"): {"C": 1}}
    assert counts_of(run(seq("ABCABC"))[0]).total == {("A", "B"): {"C": 2}, ("B", "C"): {"A": 1}, ("C", "A"): {"B": 1}}


def test_ties_in_event_time_are_ordered_by_event_id_whatever_the_arrival_order():
    events = [ev("e0", "A", T0), ev("e2", "C", T0 + 10), ev("e1", "B", T0 + 10)]
    state, outcomes = run(events)
    assert outcomes == ["applied"] * 3
    assert counts_of(state).total == {("A", "B"): {"C": 1}}
    assert counts_of(state) == reference_counts(events, cluster_of, settings())


def test_a_late_event_retracts_and_adds_transitions():
    events = [ev("a", "A", T0), ev("b", "B", T0 + 20), ev("c", "C", T0 + 30)]
    state, _ = run(events)
    assert counts_of(state).total == {("A", "B"): {"C": 1}}
    late = ev("x", "X", T0 + 10)
    assert state.apply(SourcedEvent(late, 0, 3)) == "applied"
    counts = counts_of(state)
    assert counts.total == {("A", "X"): {"B": 1}, ("X", "B"): {"C": 1}}
    assert counts == reference_counts(events + [late], cluster_of, settings())
    assert state.stats.retractions == 1


def test_late_events_collapse_on_both_sides():
    # A B C + a late B between A and B: the collapsed sequence is unchanged, nothing moves.
    base = [ev("a", "A", T0), ev("b", "B", T0 + 20), ev("c", "C", T0 + 30)]
    state, _ = run(base + [ev("b0", "B", T0 + 10)])
    assert counts_of(state).total == {("A", "B"): {"C": 1}}
    # A B C + a late A between B and C: A B A C -> (A,B)->C retracted, (B,A)->C added, A B A is no transition.
    events = base + [ev("a2", "A", T0 + 25)]
    state, _ = run(events)
    assert counts_of(state).total == {("B", "A"): {"C": 1}}
    assert counts_of(state) == reference_counts(events, cluster_of, settings())
    # A B B C + a late D between the two Bs: A B D B C.
    events = [ev("a", "A", T0), ev("b", "B", T0 + 10), ev("b2", "B", T0 + 30), ev("c", "C", T0 + 40),
              ev("d", "D", T0 + 20)]
    state, _ = run(events)
    assert counts_of(state).total == {("A", "B"): {"D": 1}, ("D", "B"): {"C": 1}}
    assert counts_of(state) == reference_counts(events, cluster_of, settings())


def test_a_late_event_that_starts_a_run_earlier_moves_the_transition_to_its_day():
    day1, day2 = T0 + DAY_S, T0 + 2 * DAY_S
    events = [ev("x", "X", T0), ev("a", "A", T0 + 60), ev("b", "B", day2 + 10)]
    state, _ = run(events)
    assert counts_of(state).daily == {day2 // DAY_S: {("X", "A"): {"B": 1}}}
    late = ev("b0", "B", day1 + 10)  # B's run now starts a day earlier
    assert state.apply(SourcedEvent(late, 0, 3)) == "applied"
    counts = counts_of(state)
    assert counts.total == {("X", "A"): {"B": 1}}
    assert counts.daily == {day1 // DAY_S: {("X", "A"): {"B": 1}}}
    assert counts == reference_counts(events + [late], cluster_of, settings())


def test_too_late_events_are_returned_with_a_reason_and_change_nothing():
    state = new_state(config=settings(lateness=100))
    batch = [SourcedEvent(e, 0, i) for i, e in enumerate(seq("AB", step=1000))]
    late = SourcedEvent(ev("late", "C", T0 + 1000 - 101), 0, 2)
    at_horizon = SourcedEvent(ev("edge", "C", T0 + 1000 - 100), 0, 3)
    assert state.apply_batch(batch).failures == []
    before, user_before = counts_of(state), state.user("u1")
    result = state.apply_batch([late])
    assert len(result.failures) == 1 and result.failures[0][0] == late
    assert "too_late" in result.failures[0][1] and "allowed_lateness_s=100" in result.failures[0][1]
    assert result.writes == [] and counts_of(state) == before and state.user("u1") == user_before
    assert state.stats.too_late == 1
    assert state.apply_batch([at_horizon]).failures == []  # exactly at the horizon is still in time
    assert counts_of(state).total == {("A", "C"): {"B": 1}}


def test_non_positive_events_and_unknown_items_count_nothing_but_join_the_recent_items():
    events = [
        ev("1", "A", T0, kind="rating", value=5.0),
        ev("2", "B", T0 + 1, kind="rating", value=3.0),  # not positive
        ev("3", "B", T0 + 2, kind="view"),  # not positive
        ev("4", "B", T0 + 3, kind="rating", value=None),  # not positive
        ev("5", "?1", T0 + 4),  # no cluster: skipped entirely, A ? A collapses to A
        ev("6", "A", T0 + 5, kind="complete"),
        ev("7", "B", T0 + 6, kind="rating", value=4.0),
        ev("8", "C", T0 + 7),
    ]
    state, outcomes = run(events)
    assert outcomes == ["applied", "not_positive", "not_positive", "not_positive", "unknown_item", "applied",
                        "applied", "applied"]
    assert counts_of(state).total == {("A", "B"): {"C": 1}}
    assert counts_of(state) == reference_counts(events, cluster_of, settings())
    assert state.stats.as_dict() == {"applied": 4, "duplicates": 0, "not_positive": 3, "unknown_item": 1,
                                     "too_late": 0, "processing_errors": 0, "retractions": 0}
    user = state.user("u1")
    assert user["i"] == ["?1", "A", "B", "C"] and user["n"] == 5 and user["t"] == ["B", "C"]


def test_recent_items_move_up_on_re_engagement_and_stay_bounded():
    config = settings(recent_items_kept=3)
    state = new_state(config=config)
    for offset, item in enumerate(["A1", "B1", "A1", "C1", "D1"]):
        state.apply(SourcedEvent(ev(f"e{offset}", item, T0 + offset, kind="view"), 0, offset))
    assert state.user("u1")["i"] == ["A1", "C1", "D1"]


def test_replaying_offsets_changes_nothing():
    events = seq("ABCDAB")
    state, _ = run(events)
    before = counts_of(state)
    outcomes = [state.apply(SourcedEvent(e, 0, i)) for i, e in enumerate(events)]
    assert outcomes == ["duplicate"] * 6
    assert counts_of(state) == before and state.finish() == []  # no writes at all


def test_offsets_are_kept_per_source():
    state = new_state()
    assert state.apply(SourcedEvent(ev("a", "A", T0), 0, 5, DIRECT)) == "applied"
    assert state.apply(SourcedEvent(ev("b", "B", T0 + 1), 0, 5, REROUTED)) == "applied"  # same offset, other topic
    assert state.apply(SourcedEvent(ev("a", "A", T0), 0, 5, DIRECT)) == "duplicate"
    assert state.user("u1")["o"] == {DIRECT: 5, REROUTED: 5}


def test_replaying_offsets_of_pruned_events_is_recognised_by_offset_not_reported_too_late():
    events = seq("ABCDABCD", step=600)
    state, _ = run(events, lateness=1_000)
    assert len(state.user("u1")["h"]) < len(events)  # early engagements were pruned from the history
    before = counts_of(state)
    assert [state.apply(SourcedEvent(e, 0, i)) for i, e in enumerate(events)] == ["duplicate"] * len(events)
    assert counts_of(state) == before


def test_pruning_keeps_exactly_the_horizon_and_two_collapsed_predecessors():
    # Entries exactly at the horizon stay: a late tie at the horizon still sorts by event_id against them.
    events = [ev("e5", "A", T0), ev("e6", "B", T0 + 100), ev("e1", "C", T0)]
    state, outcomes = run(events, lateness=100)
    assert outcomes == ["applied"] * 3
    assert counts_of(state).total == {("C", "A"): {"B": 1}}
    # Two collapsed predecessors of the pruned part are enough for a late insert right after them.
    events = [ev("a", "A", T0), ev("b", "B", T0 + 10), ev("b2", "B", T0 + 20), ev("c", "C", T0 + 200),
              ev("x", "X", T0 + 150)]
    state, outcomes = run(events, lateness=100)
    assert outcomes == ["applied"] * 5
    assert state.user("u1")["p"] == ["A", "B"] and len(state.user("u1")["h"]) == 2
    assert counts_of(state) == reference_counts(events, cluster_of, settings(100))
    assert counts_of(state).total == {("A", "B"): {"X": 1}, ("B", "X"): {"C": 1}}


def test_a_bounded_history_prunes_early_and_refuses_what_sorts_before_it():
    events = seq("ABCABC", step=10)
    state, outcomes = run(events, lateness=DAY_S, max_history_entries=3)
    assert outcomes == ["applied"] * 6 and len(state.user("u1")["h"]) == 3
    assert counts_of(state) == reference_counts(events, cluster_of, settings(DAY_S))
    early = ev("early", "D", T0 + 5)  # inside the lateness horizon, but before the entries kept
    result = state.apply_batch([SourcedEvent(early, 0, 6)])
    assert result.failures and "bounded history" in result.failures[0][1]
    inside = ev("inside", "D", T0 + 45)  # after the oldest kept entry: placed normally
    assert state.apply_batch([SourcedEvent(inside, 0, 7)]).failures == []
    assert counts_of(state) == reference_counts(events + [inside], cluster_of, settings(DAY_S))


def test_a_resent_event_id_at_a_new_offset_counts_once():
    events = seq("ABC", step=60)
    state, _ = run(events, lateness=100)
    # Within the horizon: recognised by its (ts, event_id) in the user's kept history.
    assert state.apply(SourcedEvent(events[2], 0, 10)) == "duplicate"
    assert state.apply(SourcedEvent(events[1], 0, 11, REROUTED)) == "duplicate"
    # Older than the horizon: too late to tell apart from a genuinely late event; dead-lettered, counts unchanged.
    assert state.apply(SourcedEvent(events[0], 0, 12)) == "too_late"
    assert counts_of(state) == reference_counts(events, cluster_of, settings(100))


def test_a_whole_data_set_replayed_twice_gives_the_reference_counts():
    users = [seq("ABCACBDDA", start=T0 + u * 7, step=20_000, user=f"u{u}", prefix=f"u{u}-") for u in range(4)]
    once = sorted((e for user in users for e in user), key=lambda e: (e.ts, e.event_id))
    state, outcomes = run(once + once, lateness=DAY_S)
    assert outcomes[: len(once)] == ["applied"] * len(once)
    assert set(outcomes[len(once):]) <= {"duplicate", "too_late"}
    assert "duplicate" in outcomes[len(once):] and "too_late" in outcomes[len(once):]
    assert counts_of(state) == reference_counts(once, cluster_of, settings(DAY_S))


def test_user_state_stays_bounded():
    events = seq("ABCD" * 200, step=3_600)  # 800 engagements over 33 days, one day of lateness
    state, _ = run(events, lateness=DAY_S)
    user = state.user("u1")
    assert len(user["h"]) <= 25 and len(user["p"]) <= 2
    assert counts_of(state) == reference_counts(events, cluster_of, settings(DAY_S))


def test_a_processing_error_on_one_event_changes_nothing_and_the_batch_goes_on():
    calls = {"n": 0}

    def flaky_cluster_of(item_id: str) -> str | None:
        calls["n"] += 1
        if item_id == "BOOM":
            raise KeyError("no such item in the catalogue index")
        return cluster_of(item_id)

    state = PartitionState({}, flaky_cluster_of, settings())
    state.recover()
    events = [ev("a", "A", T0), ev("b", "BOOM", T0 + 1), ev("c", "B", T0 + 2), ev("d", "C", T0 + 3)]
    result = state.apply_batch([SourcedEvent(e, 0, i) for i, e in enumerate(events)])
    assert [(f[0].offset, f[1].split(":")[0]) for f in result.failures] == [(1, "processing_error")]
    assert "no such item" in result.failures[0][1]
    assert read_counts([state.store]).total == {("A", "B"): {"C": 1}}
    assert "BOOM" not in state.user("u1")["i"] and state.user("u1")["o"] == {DIRECT: 3}
    assert state.stats.processing_errors == 1


def test_window_counts_sum_daily_buckets():
    events = [ev(f"e{i}", c, T0 + i * DAY_S + 5) for i, c in enumerate("ABCABCA")]  # one engagement per day
    state, _ = run(events)
    counts = counts_of(state)
    last = T0 + 6 * DAY_S + 100
    assert window_counts(counts, 1, last) == {("B", "C"): {"A": 1}}
    assert window_counts(counts, 2, last) == {("B", "C"): {"A": 1}, ("A", "B"): {"C": 1}}
    assert window_counts(counts, 3, last) == {("B", "C"): {"A": 1}, ("A", "B"): {"C": 1}, ("C", "A"): {"B": 1}}
    assert window_counts(counts, 7, last) == counts.total == {("A", "B"): {"C": 2}, ("B", "C"): {"A": 2},
                                                              ("C", "A"): {"B": 1}}
    assert window_counts(counts, 3, T0 + 3 * DAY_S) == {("A", "B"): {"C": 1}, ("B", "C"): {"A": 1}}
    assert window_trends(counts, 2, last) == {"C": 1, "A": 1}
    with pytest.raises(ValueError):
        window_counts(counts, 0, last)


def test_the_watermark_and_the_batch_number_survive_a_restart():
    state, _ = run(seq("ABCD", step=DAY_S))
    recovered = new_state(state.changelog.recovered())  # type: ignore[attr-defined]
    assert recovered.watermark == state.watermark == T0 + 3 * DAY_S
    assert recovered.seq == state.seq == 4


def test_the_knowledge_sync_hints_name_the_changed_pairs():
    state, _ = run(seq("ABC"))
    state.changed_pairs.clear()
    state.trends_changed = False
    state.apply(SourcedEvent(ev("d", "D", T0 + 500), 0, 3))
    assert state.changed_pairs == {("B", "C")} and state.trends_changed


def test_cluster_ids_with_the_key_separator_are_refused():
    state = PartitionState({}, lambda item: "a|b", settings())
    state.recover()
    result = state.apply_batch([SourcedEvent(ev("1", "A", T0), 0, 0)])
    assert result.failures and "cluster ids must be" in result.failures[0][1]


def test_events_before_recover_are_refused():
    state = PartitionState({}, cluster_of, settings())
    with pytest.raises(RuntimeError):
        state.apply(SourcedEvent(ev("1", "A", T0), 0, 0))


# --------------------------------------------------------------------------------------------------------------------
# crashes that keep a prefix of the changelog + at-least-once replays from two sources == the reference
# --------------------------------------------------------------------------------------------------------------------


def test_a_crash_at_any_write_then_a_replay_from_the_first_lost_batch_gives_the_reference():
    events = (seq("ABCADBBC", step=500, prefix="p") + [ev("l1", "D", T0 + 2_700), ev("l2", "A", T0 + 3_100)]
              + seq("CDAB", start=T0 + 4_000, step=300, prefix="q") + [ev("l3", "B", T0 + 4_000)]
              + seq("ABCD", start=T0 + 9_000, step=100, user="u2", prefix="w"))
    config = settings(1_000)
    expected = reference_counts(events, cluster_of, config)
    batches = [(0, 3), (3, 4), (4, 9), (9, 10), (10, 16), (16, len(events))]
    changelog = Changelog()
    state = new_state(config=config)
    log_end = []
    for start, end in batches:
        result = state.apply_batch([SourcedEvent(events[o], 0, o) for o in range(start, end)])
        assert result.failures == []
        changelog.write(result.writes)
        log_end.append(len(changelog.log))
    assert read_counts([state.store]) == expected
    for kept in range(len(changelog.log) + 1):
        first_lost = next((batches[b][0] for b, end in enumerate(log_end) if end > kept), len(events))
        for restart in {0, first_lost // 2, first_lost}:
            recovered = new_state(changelog.recovered(kept), config)
            for offset in range(restart, len(events)):
                recovered.apply(SourcedEvent(events[offset], 0, offset))
            assert read_counts([recovered.store]) == expected, (kept, restart)
            assert counts_of(recovered) == expected


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("AABBCDE"), st.integers(0, 40), st.sampled_from("ab")), max_size=40),
       st.integers(0, 2))
def test_late_inserts_anywhere_match_the_reference_after_every_event(specs, horizon):
    # All 40 time slots are within one day; lateness from "only ties" to "everything": inserts land anywhere.
    config = settings([0, 10 * 60, DAY_S][horizon])
    events = [ev(f"{tag}{i:02d}", f"{c}{i % 2}", T0 + 60 * slot) for i, (c, slot, tag) in enumerate(specs)]
    state = new_state(config=config)
    accepted = []
    for offset, event in enumerate(events):
        if state.apply(SourcedEvent(event, 0, offset)) == "applied":
            accepted.append(event)
            assert counts_of(state) == reference_counts(accepted, cluster_of, config)
    assert accepted_by_contract(events, config)[0] == accepted


event_spec = st.tuples(
    st.integers(0, 3),  # user
    st.sampled_from(["A", "A", "B", "B", "C", "D", "?"]),  # cluster of the item ("?": unknown)
    st.sampled_from([0, 0, 0, 1, 1, 2, 3, 5, 8, 13, 40, 200]),  # step forward of the user's clock, in units of 200 s
    st.sampled_from([0, 0, 0, 0, -1, -2, -4, -8, -12, -14, -15, -16, -30]),  # lateness, in units of 200 s
    st.sampled_from([("like", None), ("rating", 5.0), ("rating", 4.0), ("rating", 2.0), ("view", None)]),
    st.sampled_from("abz"),  # event_id prefix: scrambles the order of ties
)


@st.composite
def scenarios(draw, sources: int = 1):
    """Events of one partition split over `sources` source topics (a user may appear in both), with re-sent
    copies, a possible whole replay, crashes and the seed of the order the sources are interleaved in."""
    specs = draw(st.lists(event_spec, min_size=20, max_size=90))
    clocks = {u: T0 - 40 * 200 + u * 1_000 for u in range(4)}  # crosses day boundaries
    events = []
    for i, (user, cluster, step, late, (kind, value), tag) in enumerate(specs):
        clocks[user] += step * 200
        events.append(ev(f"{tag}{i:03d}", f"{cluster}{i % 3}", clocks[user] + late * 200, f"u{user}", kind, value))
    split = [draw(st.integers(0, sources - 1)) for _ in events]
    sends: dict[str, list[InteractionEvent]] = {src: [] for src in (DIRECT, REROUTED)[:sources]}
    names = list(sends)
    for e, s in zip(events, split, strict=True):
        sends[names[s]].append(e)
    for src, lst in sends.items():
        resend = draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200), st.integers(0, sources - 1)),
                               max_size=5))
        for at, to, other in resend:  # a re-sent copy, maybe through the other source
            if lst:
                copy = lst[at % len(lst)]
                target = sends[names[other]]
                target.insert(to % (len(target) + 1), copy)
        if draw(st.booleans()) and draw(st.booleans()):
            sends[src] = lst + list(lst)
    crashes = draw(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
                            max_size=3))
    return sends, crashes, draw(st.integers(0, 2**16)), draw(st.integers(1, 6))


def process_with_crashes(sends: dict[str, list[InteractionEvent]], crashes, config: Settings, seed: int,
                         max_batch: int) -> tuple[dict[str, Any], list[str]]:
    """Process the sources in batches, interleaved in a seeded random order; at each crash keep a random prefix of
    the changelog and restart each source from a random committed offset <= the first event of its earliest batch
    not wholly in that prefix, interleaving the sources in a new order."""
    rng = random.Random(seed)
    changelog = Changelog()
    state = new_state(config=config)
    positions = {src: 0 for src in sends}
    batches: list[tuple[str, int, int]] = []  # (source, first offset, changelog length after it)
    too_late: list[str] = []

    def step_batch() -> bool:
        open_sources = [src for src in sends if positions[src] < len(sends[src])]
        if not open_sources:
            return False
        src = rng.choice(open_sources)
        start = positions[src]
        end = min(len(sends[src]), start + rng.randint(1, max_batch))
        result = state.apply_batch([SourcedEvent(sends[src][o], 0, o, src) for o in range(start, end)])
        too_late.extend(f[0].event.event_id for f in result.failures)
        changelog.write(result.writes)
        batches.append((src, start, len(changelog.log)))
        positions[src] = end
        return True

    total = sum(len(v) for v in sends.values())
    for at, keep, back_i, back_r in crashes:
        for _ in range(int(at * total)):
            if not step_batch():
                break
        kept = int(keep * len(changelog.log))
        for src, back in ((DIRECT, back_i), (REROUTED, back_r)):
            if src not in sends:
                continue
            lost = [first for s, first, end in batches if s == src and end > kept]
            bound = min(lost) if lost else positions[src]
            positions[src] = int(back * bound)
        state = new_state(changelog.recovered(kept), config)  # nothing survives in memory
        changelog.log = changelog.log[:kept]
        batches = [b for b in batches if b[2] <= kept]
    while step_batch():
        pass
    counts_of(state)
    return state.store, too_late


def accepted_by_contract(sends, config: Settings) -> tuple[list[InteractionEvent], set[str]]:
    """What the stream must count: the first delivery of each event, unless it is older than the user's latest
    accepted positive engagement minus the allowed lateness."""
    latest: dict[str, float] = {}
    decided: set[str] = set()
    accepted, rejected = [], set()
    for e in sends:
        if e.event_id in decided or not config.is_positive(e.event_type, e.value) or cluster_of(e.item_id) is None:
            continue
        decided.add(e.event_id)
        if e.user_id in latest and e.ts < latest[e.user_id] - config.allowed_lateness_s:
            rejected.add(e.event_id)
            continue
        accepted.append(e)
        latest[e.user_id] = max(latest.get(e.user_id, e.ts), e.ts)
    return accepted, rejected


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(sources=1))
def test_crashes_replays_and_resends_from_one_source_count_exactly_once(scenario):
    sends, crashes, seed, max_batch = scenario
    config = settings(3_000.0)
    store, _ = process_with_crashes(sends, crashes, config, seed, max_batch)
    assert read_counts([store]) == reference_counts(accepted_by_contract(sends[DIRECT], config)[0], cluster_of,
                                                    config)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(sources=2))
def test_two_sources_interleaved_in_any_order_through_crashes_count_exactly_once(scenario):
    # Lateness covers everything, so what is counted does not depend on the order the sources are read in: every
    # positive known-cluster event counts once, however often and through whichever source it came.
    sends, crashes, seed, max_batch = scenario
    config = settings(1e9)
    store, too_late = process_with_crashes(sends, crashes, config, seed, max_batch)
    assert too_late == []
    everything = [e for lst in sends.values() for e in lst]
    assert read_counts([store]) == reference_counts(everything, cluster_of, config)


@hsettings(max_examples=150, deadline=None)
@given(scenarios(sources=1))
def test_without_crashes_exactly_the_too_late_events_are_dead_lettered(scenario):
    sends, _, seed, max_batch = scenario
    config = settings(3_000.0)
    _, too_late = process_with_crashes(sends, [], config, seed, max_batch)
    _, rejected = accepted_by_contract(sends[DIRECT], config)
    seen: set[str] = set()
    resent = {e.event_id for e in sends[DIRECT] if e.event_id in seen or seen.add(e.event_id)}
    assert rejected <= set(too_late) <= rejected | resent


def test_writes_finishing_a_recovered_batch_carry_that_batch_only_when_the_next_one_touches_the_same_keys():
    # Batch 1: two users make the same transition. A crash keeps its meta and user u1 only; recovery finishes u1's
    # share. Batch 2 then changes that very count key; a crash right after the finishing writes (before batch 2's
    # meta) must leave u1's share alone in the key, not batch 2's too.
    config = settings()
    u1 = seq("ABC", user="u1", prefix="a")
    u2 = seq("ABC", user="u2", prefix="b")
    batch1 = [SourcedEvent(e, 0, o) for o, e in enumerate(u1 + u2)]
    first = new_state(config=config)
    log = Changelog()
    log.write(first.apply_batch(batch1).writes)
    meta_and_u1 = 2  # meta first, then the user records (u1, u2), then the counts
    state = new_state(log.recovered(meta_and_u1), config)
    assert read_counts([state.store]).total == {("A", "B"): {"C": 1}}  # u1's share, finished by recover()
    later = [ev("c2", "D", T0 + 1_000, "u3"), ev("c3", "A", T0 + 1_001, "u3"), ev("c4", "B", T0 + 1_002, "u3"),
             ev("c5", "C", T0 + 1_003, "u3")]
    writes = state.apply_batch([SourcedEvent(e, 0, 6 + o) for o, e in enumerate(later)]).writes
    finishing = [w for w in writes[: writes.index(next(w for w in writes if w[0] == "m:"))]]
    assert finishing, "recover() left writes that finish batch 1"
    crashed = Changelog()
    crashed.log = log.log[:meta_and_u1]
    crashed.write(finishing)
    again = new_state(crashed.recovered(), config)
    for offset, event in enumerate(u1 + u2 + later):
        again.apply(SourcedEvent(event, 0, offset))
    assert read_counts([again.store]) == reference_counts(u1 + u2 + later, cluster_of, config)

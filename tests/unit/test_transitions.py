"""The transition/trend state machine (models/transitions.py) against the contract and the batch reference."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from agents.ingest import SourcedEvent
from models.reference import reference_counts
from models.transitions import (
    DAY_S,
    AllCounts,
    PartitionedTransitions,
    TransitionState,
    read_counts,
    window_counts,
    window_trends,
)
from streams.records import InteractionEvent
from streams.settings import Settings

T0 = 1_000 * DAY_S  # a day boundary


def cluster_of(item_id: str) -> str | None:
    """Items are named after their cluster ("A", "A7", ...); items starting with "?" have no cluster."""
    return None if item_id.startswith("?") else item_id[0]


def ev(eid: str, item: str, ts: float, user: str = "u1", kind: str = "like", value: float | None = None):
    return InteractionEvent(event_id=eid, user_id=user, item_id=item, ts=ts, event_type=kind, value=value)


class RecordingStore(MutableMapping[str, Any]):
    """A dict that logs every assignment (as JSON, so a later in-place edit of a value cannot hide in the log)."""

    def __init__(self, log: list[tuple[str, bytes]] | None = None) -> None:
        self.log: list[tuple[str, bytes]] = [] if log is None else log
        self.data: dict[str, Any] = {}
        for key, raw in self.log:
            self.data[key] = orjson.loads(raw)

    @classmethod
    def from_prefix(cls, log: list[tuple[str, bytes]], length: int) -> "RecordingStore":
        return cls(list(log[:length]))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self.log.append((key, orjson.dumps(value)))
        self.data[key] = value

    def __delitem__(self, key: str) -> None:
        raise AssertionError("the state machine must never delete keys (their offsets make replays idempotent)")

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def rebuilt(self) -> dict[str, Any]:
        return RecordingStore(list(self.log)).data


def settings(lateness: float = 3 * DAY_S) -> Settings:
    return Settings(allowed_lateness_s=lateness)


def run(events, lateness: float = 3 * DAY_S, store=None) -> tuple[TransitionState, list]:
    state = TransitionState(store if store is not None else RecordingStore(), cluster_of, settings(lateness))
    outcomes = [state.apply(event, offset).kind for offset, event in enumerate(events)]
    return state, outcomes


def counts_of(state: TransitionState) -> AllCounts:
    return read_counts([state.store])


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
    assert state.apply(late, 3).kind == "applied"
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
    assert state.apply(late, 3).kind == "applied"
    counts = counts_of(state)
    assert counts.total == {("X", "A"): {"B": 1}}
    assert counts.daily == {day1 // DAY_S: {("X", "A"): {"B": 1}}}
    assert counts == reference_counts(events + [late], cluster_of, settings())


def test_too_late_events_are_rejected_with_a_reason_and_change_nothing():
    state = TransitionState(RecordingStore(), cluster_of, settings(lateness=100))
    batch = [SourcedEvent(e, 0, i) for i, e in enumerate(seq("AB", step=1000))]
    late = SourcedEvent(ev("late", "C", T0 + 1000 - 101), 0, 2)
    at_horizon = SourcedEvent(ev("edge", "C", T0 + 1000 - 100), 0, 3)
    assert state.process_batch(batch) == []
    before = counts_of(state)
    failures = state.process_batch([late])
    assert len(failures) == 1 and failures[0][0] == late
    assert "too_late" in failures[0][1] and "allowed_lateness_s=100" in failures[0][1]
    assert counts_of(state) == before
    assert state.stats.too_late == 1
    assert state.process_batch([at_horizon]) == []  # exactly at the horizon is still in time
    assert counts_of(state).total == {("A", "C"): {"B": 1}}


def test_non_positive_events_and_unknown_items_are_ignored():
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
                                     "too_late": 0, "retractions": 0}
    assert batch_failures(state, events) == []


def batch_failures(state: TransitionState, events) -> list:
    return state.process_batch([SourcedEvent(e, 0, i) for i, e in enumerate(events)])


def test_replaying_offsets_changes_nothing():
    events = seq("ABCDAB")
    state, _ = run(events)
    before, log_length = counts_of(state), len(state.store.log)
    outcomes = [state.apply(e, i).kind for i, e in enumerate(events)]
    assert outcomes == ["duplicate"] * 6
    assert counts_of(state) == before and len(state.store.log) == log_length  # no writes at all


def test_replaying_offsets_of_pruned_events_is_recognised_by_offset_not_reported_too_late():
    events = seq("ABCDABCD", step=600)
    state, _ = run(events, lateness=1_000)
    assert len(state.store["u:u1"]["h"]) < len(events)  # early engagements were pruned from the history
    before = counts_of(state)
    assert [state.apply(e, i).kind for i, e in enumerate(events)] == ["duplicate"] * len(events)
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
    assert state.store["u:u1"]["p"] == ["A", "B"] and len(state.store["u:u1"]["h"]) == 2
    assert counts_of(state) == reference_counts(events, cluster_of, settings(100))
    assert counts_of(state).total == {("A", "B"): {"X": 1}, ("B", "X"): {"C": 1}}


def test_a_resent_event_id_at_a_new_offset_counts_once():
    events = seq("ABC", step=60)
    state, _ = run(events, lateness=100)
    # Within the horizon: recognised by its (ts, event_id) in the user's kept history.
    assert state.apply(events[2], 10).kind == "duplicate"
    assert state.apply(events[1], 11).kind == "duplicate"
    # Older than the horizon: too late to tell apart from a genuinely late event; dead-lettered, counts unchanged.
    assert state.apply(events[0], 12).kind == "too_late"
    assert counts_of(state) == reference_counts(events, cluster_of, settings(100))


def test_a_whole_data_set_replayed_twice_gives_the_reference_counts():
    users = [seq("ABCACBDDA", start=T0 + u * 7, step=20_000, user=f"u{u}", prefix=f"u{u}-") for u in range(4)]
    once = sorted((e for user in users for e in user), key=lambda e: (e.ts, e.event_id))
    state, outcomes = run(once + once, lateness=DAY_S)
    assert outcomes[: len(once)] == ["applied"] * len(once)
    assert set(outcomes[len(once):]) <= {"duplicate", "too_late"}
    assert "duplicate" in outcomes[len(once):] and "too_late" in outcomes[len(once):]
    assert counts_of(state) == reference_counts(once, cluster_of, settings(DAY_S))
    assert counts_of(state) == reference_counts(once + once, cluster_of, settings(DAY_S))


def test_every_write_is_a_fresh_small_json_value():
    events = seq("ABCDABCA", step=600) + [ev("late", "D", T0 + 650)]
    state, _ = run(events)
    assert state.store.rebuilt() == state.store.data  # no value was edited in place after being written
    for key, raw in state.store.log:
        assert len(raw) < 600, (key, raw)


def test_user_state_stays_bounded():
    events = seq("ABCD" * 200, step=3_600)  # 800 engagements over 33 days, one day of lateness
    state, _ = run(events, lateness=DAY_S)
    user = state.store["u:u1"]
    assert len(user["h"]) <= 25 and len(user["p"]) <= 2
    assert counts_of(state) == reference_counts(events, cluster_of, settings(DAY_S))


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


def test_partitions_have_their_own_stores_and_merge_on_read():
    stores: dict[int, RecordingStore] = {}
    router = PartitionedTransitions(lambda p: stores.setdefault(p, RecordingStore()), cluster_of, settings())
    u1, u2 = seq("ABC", user="u1", prefix="x"), seq("ABCD", user="u2", prefix="y")
    batch = [SourcedEvent(e, 0, i) for i, e in enumerate(u1)] + [SourcedEvent(e, 1, i) for i, e in enumerate(u2)]
    assert router(batch) == []
    assert set(stores) == {0, 1} and router.stats.applied == 7
    assert read_counts(stores.values()).total == {("A", "B"): {"C": 2}, ("B", "C"): {"D": 1}}
    assert read_counts(stores.values()) == reference_counts(u1 + u2, cluster_of, settings())


def test_cluster_ids_with_the_key_separator_are_refused():
    state = TransitionState({}, lambda item: "a|b", settings())
    with pytest.raises(ValueError):
        state.apply(ev("1", "A", T0), 0)


# --------------------------------------------------------------------------------------------------------------------
# property: crashes that keep a prefix of the changelog + at-least-once replays + re-sent events == the reference
# --------------------------------------------------------------------------------------------------------------------

def test_a_crash_at_any_write_then_a_replay_from_the_first_lost_event_gives_the_reference():
    events = (seq("ABCADBBC", step=500, prefix="p") + [ev("l1", "D", T0 + 2_700), ev("l2", "A", T0 + 3_100)]
              + seq("CDAB", start=T0 + 4_000, step=300, prefix="q") + [ev("l3", "B", T0 + 4_000)])
    config = settings(1_000)
    expected = reference_counts(events, cluster_of, config)
    clean = RecordingStore()
    state = TransitionState(clean, cluster_of, config)
    log_end = []
    for offset, event in enumerate(events):
        assert state.apply(event, offset).kind == "applied"
        log_end.append(len(clean.log))
    assert read_counts([clean]) == expected
    for kept in range(len(clean.log) + 1):
        first_lost = next((o for o, end in enumerate(log_end) if end > kept), len(events))
        for restart in {0, first_lost // 2, first_lost}:
            store = RecordingStore.from_prefix(clean.log, kept)
            state = TransitionState(store, cluster_of, config)
            for offset in range(restart, len(events)):
                state.apply(events[offset], offset)
            assert read_counts([store]) == expected, (kept, restart)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("AABBCDE"), st.integers(0, 40), st.sampled_from("ab")), max_size=40),
       st.integers(0, 2))
def test_late_inserts_anywhere_match_the_reference_after_every_event(specs, horizon):
    # All 40 time slots are within one day; lateness from "only ties" to "everything": inserts land anywhere.
    config = settings([0, 10 * 60, DAY_S][horizon])
    events = [ev(f"{tag}{i:02d}", f"{c}{i % 2}", T0 + 60 * slot) for i, (c, slot, tag) in enumerate(specs)]
    state = TransitionState(RecordingStore(), cluster_of, config)
    accepted = []
    for offset, event in enumerate(events):
        if state.apply(event, offset).kind == "applied":
            accepted.append(event)
            assert counts_of(state) == reference_counts(accepted, cluster_of, config)
    assert state.store.rebuilt() == state.store.data
    assert accepted_by_contract(events, config)[0] == accepted


LATENESS = 3_000.0

event_spec = st.tuples(
    st.integers(0, 3),  # user
    st.sampled_from(["A", "A", "B", "B", "C", "D", "?"]),  # cluster of the item ("?": unknown)
    st.sampled_from([0, 0, 0, 1, 1, 2, 3, 5, 8, 13, 40, 200]),  # step forward of the user's clock, in units of 200 s
    st.sampled_from([0, 0, 0, 0, -1, -2, -4, -8, -12, -14, -15, -16, -30]),  # lateness, in units of 200 s
    st.sampled_from([("like", None), ("rating", 5.0), ("rating", 4.0), ("rating", 2.0), ("view", None)]),
    st.sampled_from("abz"),  # event_id prefix: scrambles the order of ties
)


@st.composite
def scenarios(draw):
    specs = draw(st.lists(event_spec, min_size=20, max_size=90))
    clocks = {u: T0 - 40 * 200 + u * 1_000 for u in range(4)}  # crosses day boundaries
    events = []
    for i, (user, cluster, step, late, (kind, value), tag) in enumerate(specs):
        clocks[user] += step * 200
        item = f"{cluster}{i % 3}"
        events.append(ev(f"{tag}{i:03d}", item, clocks[user] + late * 200, f"u{user}", kind, value))
    n_partitions = draw(st.integers(2, 3))
    sends: dict[int, list[InteractionEvent]] = {p: [] for p in range(n_partitions)}
    for e in events:
        sends[int(e.user_id[1:]) % n_partitions].append(e)
    for p in range(n_partitions):
        # re-sent events (same event, new offset), and sometimes the whole partition replayed again
        resend = draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=5))
        for src, dst in resend:
            if sends[p]:
                lst = sends[p]
                src %= len(lst)
                lst.insert(src + 1 + dst % (len(lst) - src), lst[src])
        if draw(st.booleans()) and draw(st.booleans()):
            sends[p] = sends[p] + sends[p]
    crashes = {p: draw(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)), max_size=3))
               for p in range(n_partitions)}
    return sends, crashes


def process_with_crashes(sends, crashes, config: Settings):
    """Process one partition in offset order; at each crash keep a random prefix of the changelog and restart from a
    random committed offset <= the first event whose writes did not all survive."""
    store = RecordingStore()
    state = TransitionState(store, cluster_of, config)
    log_end: dict[int, int] = {}  # offset -> changelog length once its writes are done
    too_late: list[str] = []
    pos = 0

    def process_to(end: int) -> None:
        nonlocal pos
        while pos < end:
            outcome = state.apply(sends[pos], pos)
            if outcome.kind == "too_late":
                too_late.append(sends[pos].event_id)
            log_end[pos] = len(store.log)
            pos += 1

    for at, keep, back in crashes:
        process_to(pos + int(at * (len(sends) - pos)))
        kept = int(keep * len(store.log))
        lost = [o for o, end in log_end.items() if end > kept]
        bound = min(lost) if lost else pos
        restart = int(back * bound)
        store = RecordingStore.from_prefix(store.log, kept)
        state = TransitionState(store, cluster_of, config)  # nothing survives in memory
        log_end = {o: end for o, end in log_end.items() if o < restart}
        pos = restart
    process_to(len(sends))
    assert store.rebuilt() == store.data
    return store, too_late


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
@given(scenarios())
def test_crashes_replays_and_resends_count_exactly_once(scenario):
    sends, crashes = scenario
    config = settings(LATENESS)
    stores, accepted = [], []
    for p, partition_sends in sends.items():
        store, _ = process_with_crashes(partition_sends, crashes[p], config)
        stores.append(store)
        accepted += accepted_by_contract(partition_sends, config)[0]
    assert read_counts(stores) == reference_counts(accepted, cluster_of, config)


@hsettings(max_examples=150, deadline=None)
@given(scenarios())
def test_without_crashes_exactly_the_too_late_events_are_dead_lettered(scenario):
    sends, _ = scenario
    config = settings(LATENESS)
    for partition_sends in sends.values():
        _, too_late = process_with_crashes(partition_sends, [], config)
        _, rejected = accepted_by_contract(partition_sends, config)
        seen: set[str] = set()
        resent = {e.event_id for e in partition_sends if e.event_id in seen or seen.add(e.event_id)}
        assert rejected <= set(too_late) <= rejected | resent

"""The hybrid scheduler (models/finetune/scheduler.py): drift measure, cadence/drift decisions, the loop."""

from __future__ import annotations

import pytest

from models.finetune.scheduler import decide, knowledge_overlap, run_scheduler, top_next_snapshot
from streams.settings import Settings

SETTINGS = Settings(finetune_cadence_s=1_000.0, finetune_drift_threshold=0.6, finetune_min_gap_s=100.0,
                    finetune_check_interval_s=10.0)


def test_the_snapshot_keeps_each_pairs_top_next_clusters() -> None:
    counts = {("a", "b"): {"c": 5, "d": 9, "e": 1, "f": 5}, ("b", "c"): {"a": 0}}
    assert top_next_snapshot(counts, n=3) == {"a|b": ["d", "c", "f"]}  # ties by id; an all-zero pair is no knowledge


def test_overlap_is_weighted_by_the_current_counts() -> None:
    trained = {"a|b": ["c", "d", "e"], "x|y": ["z"]}
    assert knowledge_overlap({("a", "b"): [("c", 5), ("d", 3), ("e", 2)]}, trained) == 1.0
    current = {("a", "b"): [("c", 6), ("q", 2), ("r", 2)],  # 1 of 3 still known, weight 10
               ("n", "m"): [("c", 30)]}  # a pair the model never saw, weight 30
    assert knowledge_overlap(current, trained) == pytest.approx((10 / 3) / 40)
    assert knowledge_overlap({}, trained) == 1.0
    assert knowledge_overlap({("a", "b"): [("c", 1)]}, {}) == 0.0  # the base model knows nothing


def test_cycles_run_first_then_on_cadence_or_drift_but_not_too_often() -> None:
    assert decide(0.0, None, 1.0, SETTINGS).run
    assert not decide(500.0, 0.0, 0.9, SETTINGS).run
    assert decide(1_000.0, 0.0, 0.9, SETTINGS).reason.startswith("cadence")
    assert decide(500.0, 0.0, 0.5, SETTINGS).reason.startswith("drift")
    assert not decide(50.0, 0.0, 0.1, SETTINGS).run  # drift inside the minimum gap waits


def test_the_loop_runs_cycles_when_due_and_survives_a_failing_one() -> None:
    now = {"t": 0.0}
    overlaps = iter([1.0, 0.3, 0.9, 0.9, 0.9])
    ran: list[float] = []

    def cycle(settings: Settings) -> None:
        ran.append(now["t"])
        if len(ran) == 1:
            raise RuntimeError("gates refused")

    def sleep(seconds: float) -> None:
        now["t"] += 60.0 * seconds  # each check 600 s apart

    decisions = run_scheduler(SETTINGS, cycle, lambda: next(overlaps), iterations=5, clock=lambda: now["t"],
                              sleep=sleep)
    assert [d.run for d in decisions] == [True, True, False, True, False]
    assert [d.reason.split(":")[0] for d in decisions if d.run][1:] == ["drift", "cadence"]
    assert ran == [0.0, 600.0, 1_800.0]  # first (failed); drift at 600; cadence at 1,800 (counted from 600)

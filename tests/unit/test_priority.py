"""agents/priority.Priority: bulk work waits for requests, but only up to its share of the loop's time."""

from __future__ import annotations

import asyncio
import time

import pytest

from agents.priority import Priority


def run(coro):
    return asyncio.run(coro)


def test_no_request_in_flight_costs_one_turn_of_the_loop() -> None:
    async def main() -> float:
        priority = Priority(max_wait_s=1.0)
        started = time.monotonic()
        for _ in range(100):
            await priority.yield_to_requests()
        return time.monotonic() - started

    assert run(main()) < 0.5  # 100 waits of up to 1 s each would take 100 s


def test_bulk_work_resumes_when_the_requests_are_answered() -> None:
    async def main() -> tuple[float, float]:
        priority = Priority(max_wait_s=5.0, max_share=1.0, window_s=10.0)
        priority.enter()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, priority.leave)
        started = time.monotonic()
        await priority.yield_to_requests()
        return time.monotonic() - started, priority.waited_s

    elapsed, waited = run(main())
    assert 0.04 <= elapsed < 2.0  # waited for the request, not for the 5 s bound
    assert waited == pytest.approx(elapsed, abs=0.01)


def test_a_request_always_in_flight_gets_at_most_its_share_of_each_window() -> None:
    """The flood case: with one request always in flight, every pause runs into the bound. Pauses may add up to
    max_share x window; after that bulk work goes on with a single turn of the loop per slice."""

    async def main() -> tuple[int, float]:
        priority = Priority(max_wait_s=0.01, max_share=0.5, window_s=0.2)
        priority.enter()  # never left
        slices = 0
        started = time.monotonic()
        while time.monotonic() - started < 0.6:
            await priority.yield_to_requests()
            slices += 1
        return slices, priority.waited_s

    slices, waited_in_last_window = run(main())
    # Three windows of 0.2 s, each allowing 0.1 s of pauses (10 pauses of 10 ms): without the share the loop would
    # have made ~60 slices (one per 10 ms pause); with it bulk work runs freely for half of every window.
    assert slices > 200
    assert waited_in_last_window <= 0.1 + 0.02


def test_without_a_share_a_request_always_in_flight_holds_bulk_work_to_one_slice_per_pause() -> None:
    """What the share bounds (max_share=1.0 is the behaviour before it): one slice per max_wait_s."""

    async def main() -> int:
        priority = Priority(max_wait_s=0.01, max_share=1.0, window_s=0.2)
        priority.enter()
        slices = 0
        started = time.monotonic()
        while time.monotonic() - started < 0.3:
            await priority.yield_to_requests()
            slices += 1
        return slices

    assert run(main()) <= 31


def test_the_budget_is_renewed_each_window() -> None:
    now = [0.0]
    priority = Priority(max_wait_s=0.02, max_share=0.5, window_s=0.2, clock=lambda: now[0])
    assert priority._budget_s(0.0) == pytest.approx(0.02)
    priority.waited_s = 0.095
    assert priority._budget_s(0.1) == pytest.approx(0.005)  # what is left of this window's 0.1 s
    priority.waited_s = 0.1
    assert priority._budget_s(0.15) <= 0
    assert priority._budget_s(0.2) == pytest.approx(0.02)  # a new window
    assert priority.waited_s == 0.0


def test_the_share_is_checked() -> None:
    with pytest.raises(ValueError, match="max_share"):
        Priority(max_share=1.5)

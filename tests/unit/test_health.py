"""/health's states: an absorbed fault degrades the worker for a while, a fatal one fails it for good."""

import asyncio

from agents.health import DEGRADED, FAILED, OK, Health


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_an_absorbed_fault_degrades_only_for_the_recent_window():
    clock = Clock()
    health = Health(clock=clock, recent_s=300.0, stall_after_s=1e9)
    assert health.status() == (OK, [])
    health.send_retried("processing InjectedFault")
    state, reasons = health.status()
    assert state == DEGRADED and "InjectedFault" in reasons[0]
    clock.now += 299.0
    assert health.status()[0] == DEGRADED
    clock.now += 2.0
    assert health.status() == (OK, [])
    health.agent_restarted("ingest")
    assert health.status()[0] == DEGRADED
    clock.now += 301.0
    assert health.status()[0] == OK and health.restarts == {"ingest": 1}  # the total is kept


def test_a_stall_degrades_and_progress_clears_it():
    clock = Clock()
    health = Health(clock=clock, stall_after_s=60.0)
    health.observe(consumed_total=10, lag=5)
    clock.now += 61.0
    health.observe(consumed_total=10, lag=5)
    assert health.status()[0] == DEGRADED
    health.observe(consumed_total=11, lag=5)
    assert health.status()[0] == OK


def test_a_fatal_error_fails_the_worker_and_stops_it_once():
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    health = Health(clock=Clock())
    health.bind_crash(crash)
    error = RuntimeError("delivery failed")
    asyncio.run(health.fail("interactions:3@120-130", error))
    asyncio.run(health.fail("interactions:1@5", RuntimeError("later")))
    state, reasons = health.status()
    assert state == FAILED and reasons == ["fatal: interactions:3@120-130: RuntimeError: delivery failed"]
    assert crashed[0] is error

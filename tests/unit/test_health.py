"""/health's states: an absorbed fault degrades the worker for a while, a fatal one fails it for good."""

import asyncio
import threading

import pytest

from agents.health import DEGRADED, EXIT_STUCK_AFTER_FATAL, FAILED, OK, Health


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


def test_a_worker_whose_stop_hangs_after_a_fatal_error_exits_hard_at_the_deadline():
    exited = threading.Event()
    codes: list[int] = []

    def hard_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    async def hanging_crash(exc: BaseException) -> None:  # Faust's graceful stop that never ends
        pass

    health = Health(clock=Clock(), exit_deadline_s=0.05, _hard_exit=hard_exit)
    health.bind_crash(hanging_crash)
    asyncio.run(health.fail("ingest batch interactions:0@0..9", RuntimeError("delivery failed")))
    first = health._deadline
    asyncio.run(health.fail("later", RuntimeError("again")))
    assert health._deadline is first  # armed once
    assert exited.wait(10), "the deadline never fired"
    first.join(10)
    assert codes == [EXIT_STUCK_AFTER_FATAL]


def test_no_deadline_means_no_hard_exit():
    health = Health(clock=Clock(), _hard_exit=lambda code: pytest.fail("exited"))
    asyncio.run(health.fail("somewhere", RuntimeError("x")))
    assert health._deadline is None


def test_a_crashed_worker_says_why_it_exits(caplog):
    # mode re-raises the crash reason inside `exiting`, which turns it into exit code 1 without a word
    from mode.worker import exiting

    from streams.cli.worker import report_crash

    def crash() -> None:
        raise ValueError("delivery failed")

    with pytest.raises(SystemExit) as exited:
        with exiting():
            crash()
    assert exited.value.code == 1
    with caplog.at_level("CRITICAL", logger="streams.worker"):
        report_crash(exited.value)
    (record,) = [r for r in caplog.records if r.name == "streams.worker"]
    assert "ValueError('delivery failed')" in record.getMessage() and "code 1" in record.getMessage()
    assert record.exc_info and record.exc_info[1] is exited.value.__context__  # the traceback of the crash


def test_a_clean_exit_says_nothing(caplog):
    from streams.cli.worker import report_crash

    with caplog.at_level("DEBUG", logger="streams.worker"):
        report_crash(SystemExit(0))
    assert not [r for r in caplog.records if r.name == "streams.worker"]

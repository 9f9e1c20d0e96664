"""What `/health` says, and the one way an agent stops the worker when it cannot go on safely.

The worker is healthy while every agent runs, nothing fatal happened, no send keeps failing and the consumer makes
progress whenever it has lag. It is *degraded* for `recent_s` after an agent restarted or a send or an event had to
be retried (a fault that was absorbed is worth a look, not a page forever), and while lag grows and nothing is
consumed (stalled); it is *failed* once an agent reported a fatal error (the worker is then stopping, with a non-zero
exit). The totals stay in the metrics (explorer_agent_restarts, explorer_processing_retries).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

OK, DEGRADED, FAILED = "ok", "degraded", "failed"
EXIT_STUCK_AFTER_FATAL = 70  # the exit code of a worker that had to be stopped hard after a fatal error


@dataclass
class Health:
    clock: Callable[[], float] = time.monotonic
    stall_after_s: float = 60.0
    recent_s: float = 300.0  # how long an absorbed fault keeps the worker "degraded"
    restarts: dict[str, int] = field(default_factory=dict)
    fatal: str | None = None
    send_retries: int = 0
    last_send_failure: str | None = None
    _last_restart_at: float | None = None
    _last_retry_at: float | None = None
    _last_progress: float = 0.0
    _last_consumed: float = -1.0
    _crash: Callable[[BaseException], Any] | None = None
    # After a fatal error the worker stops through Faust's graceful path, which can hang (a commit queued to a
    # consumer thread the crash already stopped); past this deadline the process exits hard, non-zero. A hard exit
    # loses nothing: what is not committed is re-read by the restarted worker.
    exit_deadline_s: float | None = None
    _hard_exit: Callable[[int], Any] = os._exit
    _deadline: threading.Timer | None = None

    def __post_init__(self) -> None:
        self._last_progress = self.clock()

    def bind_crash(self, crash: Callable[[BaseException], Any]) -> None:
        """How to stop the worker (the app's crash: the worker then exits non-zero)."""
        self._crash = crash

    def agent_restarted(self, agent: str) -> None:
        self.restarts[agent] = self.restarts.get(agent, 0) + 1
        self._last_restart_at = self.clock()

    def send_retried(self, what: str) -> None:
        self.send_retries += 1
        self.last_send_failure = what
        self._last_retry_at = self.clock()

    def _recent(self, at: float | None) -> bool:
        return at is not None and self.clock() - at <= self.recent_s

    def observe(self, consumed_total: float, lag: float) -> None:
        """Called periodically: progress is any new consumption, or no lag at all."""
        now = self.clock()
        if consumed_total != self._last_consumed or lag <= 0:
            self._last_progress = now
        self._last_consumed = consumed_total

    def stalled(self) -> bool:
        return self.clock() - self._last_progress > self.stall_after_s

    async def fail(self, where: str, exc: BaseException) -> None:
        """A fatal error: say exactly where, mark the worker failed, and stop it (never commit past `where`)."""
        if self.fatal is None:
            self.fatal = f"{where}: {type(exc).__name__}: {exc}"
            log.critical("FATAL, stopping the worker without committing past it: %s", self.fatal, exc_info=exc)
            self._arm_exit_deadline()
        if self._crash is not None:
            await self._crash(exc)

    def _arm_exit_deadline(self) -> None:
        if self.exit_deadline_s is None:
            return

        def exit_now() -> None:
            log.critical("the worker did not stop within %gs of the fatal error: exiting hard (code %d)",
                         self.exit_deadline_s, EXIT_STUCK_AFTER_FATAL)
            for handler in logging.getLogger().handlers:
                handler.flush()
            self._hard_exit(EXIT_STUCK_AFTER_FATAL)

        self._deadline = threading.Timer(self.exit_deadline_s, exit_now)
        self._deadline.daemon = True  # a worker that stops in time exits without waiting for it
        self._deadline.start()

    def status(self) -> tuple[str, list[str]]:
        reasons: list[str] = []
        if self.fatal:
            return FAILED, [f"fatal: {self.fatal}"]
        if self._recent(self._last_restart_at):
            reasons += [f"agent {name} restarted {n} time(s), last within {self.recent_s:g}s"
                        for name, n in sorted(self.restarts.items())]
        if self._recent(self._last_retry_at):
            reasons.append(f"{self.send_retries} attempt(s) retried, last within {self.recent_s:g}s: "
                           f"{self.last_send_failure}")
        if self.stalled():
            reasons.append(f"stalled: lag and nothing consumed for over {self.stall_after_s:g}s")
        return (DEGRADED if reasons else OK), reasons


"""Ack a unit's source offsets once everything it produced is delivered; stop the worker when that cannot happen.

Units are pipelined: the agent goes on with the next batch while earlier ones are still being delivered, at most
`max_in_flight` at a time (back-pressure instead of unbounded memory). Faust commits only acked offsets, and a
partition's commit never passes a batch that is not acked yet (agents/batching.py), so the commit always trails
what is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agents.health import Health
from agents.outbox import OutboxUnit

log = logging.getLogger(__name__)


class Acker:
    def __init__(self, ack: Callable[[Any], Any], health: Health, max_in_flight: int = 16,
                 failpoint: Callable[[str], None] = lambda name: None) -> None:
        self._ack = ack
        self._health = health
        self._failpoint = failpoint  # fault injection (streams/failpoints.py): "deliver" fails a delivery
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task] = set()

    async def after_delivery(self, message: Any, unit: OutboxUnit, where: str,
                             then: Callable[[], Awaitable[None] | None] | None = None) -> None:
        """Ack `message` (and run `then`) once `unit` is delivered; waits while `max_in_flight` units are open."""
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._wait(message, unit, where, then))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wait(self, message: Any, unit: OutboxUnit, where: str,
                    then: Callable[[], Awaitable[None] | None] | None) -> None:
        try:
            self._failpoint("deliver")
            await unit.delivered()
        except Exception as exc:
            await self._health.fail(f"delivery of the records of {where}", exc)
            return
        finally:
            self._slots.release()
        self._ack(message)
        if then is not None:
            result = then()
            if asyncio.iscoroutine(result):
                await result

    async def drain(self) -> None:
        """Wait for every open unit (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

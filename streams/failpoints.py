"""Named fault-injection points for tests and drills: `EXPLORER_FAILPOINTS="apply=8@20000"` makes the `apply`
point raise for 8 seconds once it has been passed 20,000 times. Off (empty) by default; production code only ever
asks `hit(name)`, which costs a dict lookup when nothing is configured."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


class InjectedFault(RuntimeError):
    """Raised by an active failpoint."""


@dataclass
class _Point:
    seconds: float
    after: int
    passed: int = 0
    started: float | None = None


class Failpoints:
    def __init__(self, spec: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._points: dict[str, _Point] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, rest = part.partition("=")
            seconds, _, after = rest.partition("@")
            self._points[name] = _Point(float(seconds or 0), int(after or 0))

    def hit(self, name: str) -> None:
        point = self._points.get(name)
        if point is None:
            return
        point.passed += 1
        if point.passed <= point.after:
            return
        now = self._clock()
        if point.started is None:
            point.started = now
        if now - point.started < point.seconds:
            raise InjectedFault(f"failpoint {name!r} active ({point.seconds:g}s after {point.after} passes)")

    def wrap(self, name: str, fn: Callable) -> Callable:
        """`fn` with the failpoint checked before every call (the composition root wraps processors with it)."""
        if name not in self._points:
            return fn

        def checked(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.hit(name)
            return fn(*args, **kwargs)

        return checked

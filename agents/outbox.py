"""The records one unit of work (a fetched batch, a request) must have delivered before its source offsets are acked.

An agent adds every record the unit produces -- changelog writes, dead letters, routed records, answers -- and hands
the unit to the producer in one go: records are grouped per (topic, partition) into producer batches in the order
added (the changelog protocol of models/partition_state.py depends on that order within a partition). `send()`
returns once the producer holds them; `delivered()` resolves when the broker has acknowledged every one, and only
then does the agent ack the source offsets, so a commit never covers a record whose effects are not durable.

A delivery that fails for good (the producer already retried for `producer_request_timeout`) cannot be repaired
in place: the worker's memory is ahead of its changelog. The agent then reports it fatal (agents/health.py): the
worker stops with a non-zero exit, and a restart recovers from the durable prefix and re-reads from the last commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Header = tuple[str, bytes]


class RecordTooLarge(ValueError):
    """A single record is larger than one producer batch: it can never be delivered."""


class OutboxUnit:
    """The records of one unit of work, by destination partition, in the order they were added."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._batches: dict[tuple[str, int], list[Any]] = {}
        self._counts: dict[int, int] = {}  # id(builder) -> records in it
        self._futures: list[asyncio.Future] = []
        self._sent: dict[tuple[str, int], list[tuple[asyncio.Future, int]]] = {}
        self.records = 0

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
            headers: list[Header] | None = None, timestamp_ms: int | None = None) -> None:
        builders = self._batches.setdefault((topic, partition), [])
        if not builders or builders[-1].append(timestamp=timestamp_ms, key=key, value=value,
                                               headers=headers or []) is None:
            builder = self._producer.create_batch()
            if builder.append(timestamp=timestamp_ms, key=key, value=value, headers=headers or []) is None:
                raise RecordTooLarge(f"a record of {len(value or b'') + len(key or b'')} bytes for {topic}:{partition} "
                                     "does not fit one producer batch")
            builders.append(builder)
        self._counts[id(builders[-1])] = self._counts.get(id(builders[-1]), 0) + 1
        self.records += 1

    async def send(self) -> None:
        """Hand every batch to the producer, partition by partition, batches in order."""
        for (topic, partition), builders in self._batches.items():
            for builder in builders:
                future = await self._producer.send_batch(builder, topic, partition=partition)
                self._futures.append(future)
                self._sent.setdefault((topic, partition), []).append((future, self._counts[id(builder)]))
        self._batches = {}

    async def last_offset(self, topic: str, partition: int) -> int | None:
        """Once delivered: the offset of the last record this unit wrote to (topic, partition), None if none."""
        sent = self._sent.get((topic, partition))
        if not sent:
            return None
        future, count = sent[-1]
        metadata = await future
        return metadata.offset + count - 1

    async def delivered(self) -> None:
        """Wait until the broker acknowledged every record sent; raises the first delivery error."""
        if self._futures:
            await asyncio.gather(*self._futures)


class Outbox:
    """Makes units over the app's producer (the idempotent aiokafka producer of agents/batching.py)."""

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer

    def unit(self) -> OutboxUnit:
        return OutboxUnit(self._producer())

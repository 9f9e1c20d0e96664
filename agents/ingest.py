"""The ingest agent: validates every interaction record, dead-letters bad ones, hands good ones to processors.

It consumes raw bytes in batches (`take_events`) so JSON decoding and validation stay cheap per event, and it
never lets one bad record stop the stream: a rejection or a processor failure becomes a dead letter with a reason.
"""

from __future__ import annotations

import base64
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streams import codec
from streams.records import DeadLetter, InteractionEvent
from streams.validation import EventValidator, Rejection

if TYPE_CHECKING:
    import faust

    from streams.app import AppContext

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourcedEvent:
    """A valid event with where it came from: processors use partition/offset to stay idempotent."""

    event: InteractionEvent
    partition: int
    offset: int


# A processor takes one partition-ordered batch of valid events and returns (or, if async, resolves to) the failures
# it wants dead-lettered.
BatchProcessor = Callable[[Sequence[SourcedEvent]], "list[tuple[SourcedEvent, str]]"]


def dead_letter(topic: str, partition: int, offset: int, raw: bytes | None, error: str) -> bytes:
    record = DeadLetter(
        error=error,
        topic=topic,
        partition=partition,
        offset=offset,
        raw=base64.b64encode(raw or b"").decode("ascii"),
        at=time.time(),
    )
    return codec.dumps(record)


def keep_queued_events_on_resume(app: "faust.App", stream: "faust.StreamT") -> None:
    """Stop `app.flow_control.resume()` from emptying this stream's queue of fetched events.

    At the end of a table recovery Faust resumes the source partitions and awaits the seek to the committed offsets
    *before* it resumes flow control, which clears every stream queue: events fetched in that window were dropped,
    unprocessed and unacked, while the fetcher's read offset moved past them. Later commits skip such a hole (Faust
    accepts a one-offset hole, and any hole before a partition's first commit) or stall on it, and the per-user
    offsets of the transitions state then take the re-delivered events for already applied. The clearing is not
    needed here: Faust's compiled stream iterator skips, without acking, events of an older consumer generation.
    """
    queues = getattr(app.flow_control, "_queues", None)
    if queues is None:  # a Faust/mode without the managed queue set: nothing to detach, but say so
        log.warning("cannot detach the %s stream queue from flow control; events may be lost on rebalance", stream)
        return
    queues.discard(stream.channel.queue)


def register(app: "faust.App", context: "AppContext") -> None:
    settings = context.settings
    metrics = context.metrics
    validator = EventValidator(settings)
    dlq = context.topics.dlq
    last_offsets: dict[tuple[str, int], int] = {}

    async def send_dead_letter(message, error: str) -> None:  # type: ignore[no-untyped-def]
        if not settings.dead_letters:  # a backfill: the live workers dead-lettered these records already
            return
        value = dead_letter(message.topic, message.partition, message.offset, message.value, error)
        await dlq.send(key=message.key, value=value)

    @app.agent(context.topics.interactions, name="ingest")
    async def ingest(stream: "faust.StreamT") -> None:
        keep_queued_events_on_resume(app, stream)
        async for events in stream.take_events(settings.stream_batch_size, within=settings.stream_batch_timeout_s):
            started = time.monotonic()
            now = time.time()
            valid: list[SourcedEvent] = []
            for event in events:
                message = event.message
                last_offsets[(message.topic, message.partition)] = message.offset
                result = validator.validate(message.key, message.value)
                if isinstance(result, Rejection):
                    metrics.events_rejected.labels(result.code).inc()
                    await send_dead_letter(message, str(result))
                else:
                    valid.append(SourcedEvent(result, message.partition, message.offset))
                # Broker append time → now: how far behind real time the worker runs.
                metrics.event_latency.observe(max(0.0, now - message.timestamp))
            metrics.events_in.inc(len(events))
            metrics.events_valid.inc(len(valid))
            for processor in context.processors:
                try:
                    failures = processor(valid)
                    if inspect.isawaitable(failures):  # processors that write state await their writes
                        failures = await failures
                except Exception as exc:  # a bug in one processor must not stop ingestion or lose the batch
                    log.exception("processor %r failed on a batch of %d events", processor, len(valid))
                    failures = [(item, f"{type(exc).__name__}: {exc}") for item in valid]
                if failures:
                    messages = {(e.message.partition, e.message.offset): e.message for e in events}
                    for failed, reason in failures:
                        metrics.events_rejected.labels("processing_error").inc()
                        await send_dead_letter(messages[(failed.partition, failed.offset)], f"processing_error: {reason}")
            metrics.batch_seconds.observe(time.monotonic() - started)

    @app.timer(5.0)
    async def report_lag() -> None:
        for tp in app.consumer.assignment():
            if tp.topic != context.topics.interactions.get_topic_name():
                continue
            highwater = app.consumer.highwater(tp)
            seen = last_offsets.get((tp.topic, tp.partition))
            if highwater is None:
                continue
            lag = highwater - (seen + 1 if seen is not None else 0)
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, lag))

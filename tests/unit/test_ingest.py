"""The ingest agent's guard against Faust dropping fetched events when flow control resumes."""

from __future__ import annotations

import asyncio

import faust

from agents.batching import keep_queued_events_on_resume


def test_flow_control_resume_keeps_the_ingest_streams_queued_events():
    async def scenario() -> tuple[int, int]:
        app = faust.App("test-ingest-queue", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)
        topic = app.topic("interactions", key_type=bytes, value_type=bytes, key_serializer="raw",
                          value_serializer="raw")
        kept, plain = app.stream(topic), app.stream(topic)
        keep_queued_events_on_resume(app, kept)
        kept.channel.queue.put_nowait(b"fetched during the seek")
        plain.channel.queue.put_nowait(b"fetched during the seek")
        app.flow_control.resume()  # what Faust calls at the end of a table recovery
        return kept.channel.queue.qsize(), plain.channel.queue.qsize()

    kept, plain = asyncio.run(scenario())
    assert kept == 1
    assert plain == 0, "Faust no longer clears stream queues on resume: keep_queued_events_on_resume may be obsolete"


def test_a_batchs_changelog_records_are_encoded_a_slice_at_a_time_with_a_pause_between():
    from agents.ingest import encoded_in_slices
    from agents.state import StateTable

    writes = [(f"u:{n}", {"t": ["a", "b"], "n": n}) for n in range(450)] + [("gone", None)]
    pauses: list[int] = []

    def encode(partition, chunk):
        assert len(chunk) <= 200  # never more than one slice at once
        return StateTable.encode(partition, chunk)

    async def pause() -> None:
        pauses.append(1)

    records = asyncio.run(encoded_in_slices(encode, 3, writes, pause, every=200))
    assert records == StateTable.encode(3, writes)  # the same records, in order
    assert len(pauses) == 2  # 451 writes: three slices, a pause between each two
    assert asyncio.run(encoded_in_slices(encode, 3, [], pause, every=200)) == [] and len(pauses) == 2

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

"""The worker against the real broker: bad records go to the DLQ with a reason and their original bytes, good
records interleaved with them are all processed, and the worker keeps running."""

import base64
import hashlib
import random

import orjson
import pytest

from streams.records import InteractionEvent
from streams.replay import make_producer
from streams.topics import INTERACTIONS, INTERACTIONS_DLQ, topic_name
from tests.fuzzing import corpus
from tests.harness import consume_all, run_worker, wait_until

pytestmark = pytest.mark.integration

BAD = 1000
GOOD = 2000


def good_events(count: int) -> list[tuple[bytes, bytes]]:
    events = []
    for i in range(count):
        user = f"user-{i % 97}"
        event = InteractionEvent(f"good-{i}", user, str(i % 500), 881250949.0 + i, "rating", float(1 + i % 5))
        events.append((user.encode(), orjson.dumps(event)))
    return events


def test_bad_inputs_land_in_the_dlq_and_good_ones_are_processed(isolated_settings, tmp_path):
    settings = isolated_settings
    bad = corpus(BAD)
    records = [(key, value, False) for key, value in bad] + [(k, v, True) for k, v in good_events(GOOD)]
    random.Random(7).shuffle(records)  # interleave good and bad

    with run_worker(settings, tmp_path) as worker:
        producer = make_producer(settings)
        topic = topic_name(settings, INTERACTIONS)
        for key, value, _ in records:
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
        assert producer.flush(30) == 0

        wait_until(lambda: worker.metric("explorer_events_in_total") >= BAD + GOOD, 120,
                   "the worker to consume every record")
        dead = consume_all(settings, topic_name(settings, INTERACTIONS_DLQ), expected=BAD, timeout_s=60)

        assert worker.alive(), worker.log_tail()
        assert worker.metric("explorer_events_in_total") == BAD + GOOD
        assert worker.metric("explorer_events_valid_total") == GOOD
        rejected = sum(v for k, v in worker.metrics().items() if k.startswith("explorer_events_rejected_total"))
        assert rejected == BAD

        sent_bad = sorted((key or b"", value) for key, value in bad)
        received = []
        for message in dead:
            letter = orjson.loads(message.value())
            assert set(letter) == {"error", "topic", "partition", "offset", "raw", "at", "raw_size", "raw_sha256",
                                   "truncated", "origin"}
            assert letter["error"] and letter["topic"] == topic
            assert letter["partition"] >= 0 and letter["offset"] >= 0
            raw = base64.b64decode(letter["raw"])
            assert not letter["truncated"] and letter["raw_size"] == len(raw)
            assert letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()
            received.append((message.key() or b"", raw))
        assert sorted(received) == sent_bad  # exactly the bad records, byte for byte, with their original keys

        health = orjson.loads(worker.get("/health"))
        assert health["status"] == "ok"

"""No record is ever skipped (issue: one bad record silently lost half the stream).

Against the real broker and real worker processes: every record produced is either counted or dead-lettered with a
reason -- per partition, and at every moment no offset is committed past a record that is neither -- through
records at and past every size limit, malformed ones, duplicates, rerouted ones, and a worker SIGKILLed mid-run.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import signal
import threading
import time

import orjson
import pytest

from models.clusters import load_serving
from models.reference import reference_counts
from streams.app import consumer_group
from streams.offsets import committed_offsets
from streams.partitioning import murmur2_partition
from streams.records import InteractionEvent
from streams.replay import make_producer
from streams.state_reader import read_changelog, read_state_counts
from streams.topics import INTERACTIONS, INTERACTIONS_DLQ, topic_name
from tests.fuzzing import corpus
from tests.harness import group_caught_up, run_worker, wait_until

pytestmark = pytest.mark.integration

T0 = 881_250_949.0


@pytest.fixture
def counting_settings(isolated_settings, clusters_data_dir, movielens_dir):
    return isolated_settings.model_copy(update={"data_dir": clusters_data_dir, "movielens_dir": movielens_dir})


def event_bytes(event: InteractionEvent, **extra) -> bytes:
    return orjson.dumps({**orjson.loads(orjson.dumps(event)), **extra})


def padded_to(event: InteractionEvent, size: int) -> bytes:
    """The event's JSON with a padding field that makes it exactly `size` bytes."""
    bare = event_bytes(event, padding="")
    return event_bytes(event, padding="p" * (size - len(bare)))


def caught_up(settings) -> bool:
    group = consumer_group(settings, load_serving(settings).version)
    return group_caught_up(settings, group, topic_name(settings, INTERACTIONS))


def read_letters(settings) -> dict[tuple[str, int, int], dict]:
    """Dead letters by (topic, partition, offset) of the record, up to the DLQ's end when called (the DLQ is at
    least once: duplicates collapse)."""
    from confluent_kafka import Consumer, TopicPartition

    from streams.kafka_config import confluent_config
    from streams.offsets import end_offsets

    dlq = topic_name(settings, INTERACTIONS_DLQ)
    ends = {p: end for p, end in end_offsets(settings, dlq).items() if end > 0}
    consumer = Consumer(confluent_config(settings, **{"group.id": "letters", "enable.auto.commit": False}))
    letters = {}
    try:
        consumer.assign([TopicPartition(dlq, p, 0) for p in ends])
        deadline = time.monotonic() + 60
        while ends:
            assert time.monotonic() < deadline, "reading the DLQ took over 60 s"
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                assert not message.error(), message.error()
                letter = orjson.loads(message.value())
                letters[(letter["topic"], letter["partition"], letter["offset"])] = letter
                if message.offset() + 1 >= ends.get(message.partition(), 0):
                    ends.pop(message.partition(), None)
    finally:
        consumer.close()
    return letters


def test_a_900_kb_record_is_dead_lettered_and_nothing_after_it_is_lost(counting_settings, tmp_path):
    settings = counting_settings
    clusters = load_serving(settings)
    items = sorted(clusters.item_to_cluster)
    topic = topic_name(settings, INTERACTIONS)
    events = [InteractionEvent(f"v{i}", str(1 + i % 50), items[i % len(items)], T0 + 60 * i, "rating",
                               float(4 + i % 2)) for i in range(3_000)]
    big = InteractionEvent("big", "7", items[0], T0 + 90_000, "rating", 5.0)
    big_value = padded_to(big, 900_000)
    producer = make_producer(settings)
    for i, event in enumerate(events):
        producer.produce(topic, key=event.user_id.encode(), value=orjson.dumps(event))
        if i == 1_500:
            producer.produce(topic, key=b"7", value=big_value)
        producer.poll(0)
    assert producer.flush(30) == 0

    with run_worker(settings, tmp_path) as worker:
        wait_until(lambda: caught_up(settings), 120, "the worker to commit every record", poll_s=0.5)
        assert worker.metric("explorer_events_in_total") == 3_001
        assert worker.metric("explorer_events_valid_total") == 3_000
        assert worker.metric("explorer_events_rejected_total{reason=oversized}") == 1
        health = orjson.loads(worker.get("/health"))
        assert health["status"] == "ok", health
        letters = read_letters(settings)
        assert len(letters) == 1
        letter = next(iter(letters.values()))
        raw = base64.b64decode(letter["raw"])
        assert letter["error"].startswith("oversized") and letter["truncated"] is True
        assert letter["raw_size"] == 900_000 and raw == big_value[: settings.dead_letter_max_raw_bytes]
        assert letter["raw_sha256"] == hashlib.sha256(big_value).hexdigest()
        assert worker.alive(), worker.log_tail()
    expected = reference_counts(events, clusters.cluster_of, settings)
    assert read_state_counts(settings, clusters.version) == expected


def accounting_corpus(settings, items: list[str], size: int, seed: int = 11):
    """(partition, key, value, valid event or None) in production order: valid events (some re-sent, some put on
    the wrong partition), and invalid records of every kind, including each size limit and one past it."""
    rng = random.Random(seed)
    partitions = settings.interactions_partitions
    limit = settings.max_event_bytes
    bad = corpus(size // 4)
    records = []
    sent: list[InteractionEvent] = []
    clock = T0
    for n in range(size):
        roll = rng.random()
        if roll < 0.22:
            key, value = bad[n % len(bad)]
            partition = murmur2_partition(key, partitions) if key else rng.randrange(partitions)
            records.append((partition, key, value, None))
            continue
        if roll < 0.26:
            special = rng.choice(["at_limit", "past_limit", "huge", "deep", "bad_utf8", "huge_ts", "infinity",
                                  "tombstone"])
            user = str(rng.randrange(1, 200))
            event = InteractionEvent(f"s{n}", user, rng.choice(items), clock, "rating", 5.0)
            key = user.encode()
            partition = murmur2_partition(key, partitions)
            if special == "at_limit":  # exactly the limit: valid, and counted
                clock += 60
                records.append((partition, key, padded_to(event, limit), event))
                sent.append(event)
                continue
            value = {
                "past_limit": padded_to(event, limit + 1),
                "huge": padded_to(event, 200_000),
                "deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                "bad_utf8": event_bytes(event)[:-2] + b'\xff"}',
                "huge_ts": event_bytes(event)[:-1] + b',"ts":' + b"9" * 40 + b"}",  # a later "ts" wins in JSON
                "infinity": event_bytes(event)[:-1] + b',"extra":1e400}',
                "tombstone": None,
            }[special]
            records.append((partition, key, value, None))
            continue
        if roll < 0.30 and sent:  # a re-sent copy of a recent event (a producer retry): counted once
            event = rng.choice(sent[-50:])
        else:
            clock += 60
            user = str(rng.randrange(1, 200))
            event = InteractionEvent(f"e{n}", user, rng.choice(items), clock, "rating", float(rng.randint(1, 5)))
            sent.append(event)
        key = event.user_id.encode()
        partition = murmur2_partition(key, partitions)
        if rng.random() < 0.05:  # produced with another partitioner: rerouted to the user's partition
            partition = (partition + 1 + rng.randrange(partitions - 1)) % partitions
        records.append((partition, key, orjson.dumps(event), event))
    return records


def test_every_record_is_counted_or_dead_lettered_and_commits_never_pass_an_unaccounted_one(
        counting_settings, tmp_path):
    # A replay at full speed reroutes an event hours of event time after its user's direct events of that batch;
    # a lateness of 30 days keeps "too late" out of this test (tests/unit/test_transitions.py covers it), so every
    # valid event must be counted, and exactly once.
    settings = counting_settings.model_copy(update={"allowed_lateness_s": 30 * 86_400.0})
    clusters = load_serving(settings)
    topic = topic_name(settings, INTERACTIONS)
    records = accounting_corpus(settings, sorted(clusters.item_to_cluster), 12_000)
    offsets: list[tuple[int, int]] = []  # (partition, offset) as delivery reports come back

    def produce_slowly() -> None:
        # ~20 s of traffic, so commits happen while records still arrive and the checks below see them mid-run.
        producer = make_producer(settings)
        for n, (partition, key, value, _) in enumerate(records):
            producer.produce(topic, key=key, value=value, partition=partition,
                             on_delivery=lambda err, msg: offsets.append((msg.partition(), msg.offset())))
            producer.poll(0)
            if n % 300 == 299:
                time.sleep(0.5)
        assert producer.flush(60) == 0

    def known_positions() -> dict[tuple[int, int], tuple]:
        # Per partition, delivery reports come back in production order: the i-th record produced to a partition
        # got the i-th offset reported there.
        delivered: dict[int, list[int]] = {}
        for partition, offset in list(offsets):
            delivered.setdefault(partition, []).append(offset)
        cursors = {partition: iter(sorted(found)) for partition, found in delivered.items()}
        known = {}
        for record in records:
            offset = next(cursors.get(record[0], iter(())), None)
            if offset is not None:
                known[(record[0], offset)] = record
        return known

    first_ids: set[str] = set()
    first_copy: set[int] = set()  # records that are the first copy of their event
    for index, record in enumerate(records):
        if record[3] is not None and record[3].event_id not in first_ids:
            first_ids.add(record[3].event_id)
            first_copy.add(id(record))
    group = consumer_group(settings, clusters.version)

    def check_commits_are_accounted() -> int:
        """Every record below a committed offset is dead-lettered (invalid) or applied to its user (the first
        copy of a valid event produced on its user's partition)."""
        known = known_positions()
        committed = committed_offsets(settings, group, topic, list(range(settings.interactions_partitions)))
        letters = read_letters(settings)
        state = read_changelog(settings, clusters.version)
        for (partition, offset), (_, key, _, event) in known.items():
            if offset >= committed.get(partition, 0):
                continue
            if event is None:
                assert (topic, partition, offset) in letters, (partition, offset)
            elif id(known[(partition, offset)]) in first_copy and murmur2_partition(
                    key, settings.interactions_partitions) == partition and (topic, partition, offset) not in letters:
                user = state.get(partition, {}).get(f"u:{event.user_id}")
                assert user is not None and user["o"]["i"] >= offset, (partition, offset, user and user["o"])
        return sum(max(0, n) for n in committed.values())

    producing = threading.Thread(target=produce_slowly, daemon=True)
    samples = []
    with run_worker(settings, tmp_path) as worker:
        producing.start()
        wait_until(lambda: worker.metric("explorer_events_in_total") >= 5_000, 120, "5,000 records consumed",
                   poll_s=0.05)
        while worker.metric("explorer_events_in_total") < 7_000:
            samples.append(check_commits_are_accounted())
        os.killpg(worker.process.pid, signal.SIGKILL)  # mid-run: in-flight batches are lost, never skipped
        worker.process.wait(30)
    samples.append(check_commits_are_accounted())
    with run_worker(settings, tmp_path) as worker:
        producing.join(120)
        deadline = time.monotonic() + 300
        while not caught_up(settings):
            assert time.monotonic() < deadline, "the restarted worker did not commit everything"
            samples.append(check_commits_are_accounted())
        assert worker.alive(), worker.log_tail()
        assert orjson.loads(worker.get("/health"))["status"] == "ok"
    samples.append(check_commits_are_accounted())
    assert samples[-1] == len(records)
    assert any(0 < sample < len(records) for sample in samples), samples  # commits were checked mid-run too

    by_position = known_positions()
    assert len(by_position) == len(records)
    invalid = {pos for pos, record in by_position.items() if record[3] is None}
    per_partition: dict[int, int] = {}
    for partition, _ in by_position:
        per_partition[partition] = per_partition.get(partition, 0) + 1

    # Every record is accounted for: dead-lettered where it was produced (direct) or where it was rerouted to (the
    # letter names its origin), or counted.
    letters = read_letters(settings)
    dead: dict[tuple[int, int], str] = {}
    for (letter_topic, partition, offset), letter in letters.items():
        assert letter["error"]
        if letter_topic == topic:
            dead[(partition, offset)] = letter["error"]
        else:
            origin_topic, _, rest = letter["origin"].partition(":")
            origin_partition, _, origin_offset = rest.partition("@")
            assert origin_topic == topic, letter
            dead[(int(origin_partition), int(origin_offset))] = letter["error"]
    assert set(dead) == invalid  # exactly the invalid records, each with its reason; no valid one
    for partition, produced in per_partition.items():
        valid_here = [pos for pos in by_position if pos[0] == partition and pos not in invalid]
        dead_here = [pos for pos in dead if pos[0] == partition]
        assert len(valid_here) + len(dead_here) == produced
    valid_events = [record[3] for record in records if record[3] is not None]
    assert read_state_counts(settings, clusters.version) == reference_counts(valid_events, clusters.cluster_of,
                                                                             settings)

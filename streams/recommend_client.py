"""A client of the recommender: sends requests to `recommendation-requests` and waits for their answers.

The answers' consumer is assigned to every partition of `recommendations` at its current end *before* a request is
sent, so no answer can slip past it. Used by `explorer recommend`, `explorer demo`, the tests and the latency bench.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from streams.records import RecommendationRequest
from streams.settings import Settings
from streams.topics import RECOMMENDATION_REQUESTS, RECOMMENDATIONS, topic_name


class RecommendationTimeout(TimeoutError):
    """Some requests got no answer in time; the message says how many and what to check."""


@dataclass(frozen=True)
class Answer:
    recommendation: dict[str, Any]
    latency_s: float  # request sent -> answer received, through Kafka both ways
    received_at: float  # wall clock when the answer arrived (with the answer's ts and produced_at: the split)


class RecommendationClient:
    def __init__(self, settings: Settings, partitioner: str = "murmur2_random") -> None:
        """`partitioner`: librdkafka's name; murmur2 is native (no reroute hop), any other works (rerouted)."""
        from confluent_kafka import Consumer, Producer, TopicPartition

        from streams.kafka_config import confluent_config

        self.settings = settings
        self._requests_topic = topic_name(settings, RECOMMENDATION_REQUESTS)
        topic = topic_name(settings, RECOMMENDATIONS)
        # murmur2: the same partition as the user's interactions (the recommender serves from that partition).
        self._producer = Producer(confluent_config(settings, **{
            "enable.idempotence": True, "partitioner": partitioner, "linger.ms": 0}))
        self._consumer = Consumer(confluent_config(settings, **{
            "group.id": f"explorer-recommend-client-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "auto.offset.reset": "latest", "fetch.wait.max.ms": 10}))
        metadata = self._consumer.list_topics(topic, timeout=10).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(f"topic {topic} is not available ({metadata.error}): run `explorer topics create`")
        assigned = []
        for partition in metadata.partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            assigned.append(TopicPartition(topic, partition, high))
        self._consumer.assign(assigned)
        self._sent_at: dict[str, float] = {}
        self.answers: dict[str, Answer] = {}

    def send(self, user_id: str, k: int = 10, request_id: str | None = None) -> str:
        sent_at = time.monotonic()  # before the request leaves: its trip to the broker is part of the latency
        request = RecommendationRequest(request_id=request_id or f"cli-{uuid.uuid4().hex}", user_id=user_id,
                                        ts=time.time(), k=k)
        self._producer.produce(self._requests_topic, key=user_id.encode(), value=orjson.dumps(request))
        self._producer.flush(10)
        self._sent_at.setdefault(request.request_id, sent_at)
        return request.request_id

    def wait(self, request_ids: Iterable[str], timeout_s: float = 60.0) -> dict[str, Answer]:
        """The answers of `request_ids` (the first answer of each); raises RecommendationTimeout if some are late."""
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout_s
        while not wanted <= self.answers.keys() and time.monotonic() < deadline:
            # poll() returns as soon as one message arrives (consume() would wait out its whole timeout for a
            # batch), then whatever else is already fetched is drained without waiting.
            first = self._consumer.poll(0.05)
            messages = [first] + self._consumer.consume(num_messages=500, timeout=0) if first is not None else []
            for message in messages:
                if message.error():
                    continue
                received = time.monotonic()
                try:
                    value = orjson.loads(message.value())
                except orjson.JSONDecodeError:
                    continue
                rid = value.get("request_id")
                if rid in self._sent_at and rid not in self.answers:
                    self.answers[rid] = Answer(value, received - self._sent_at[rid], time.time())
        missing = wanted - self.answers.keys()
        if missing:
            raise RecommendationTimeout(
                f"{len(missing)} of {len(wanted)} requests got no recommendation within {timeout_s:.0f}s: is a "
                "worker running (`explorer worker`) with clusters built? Rejected requests are in interactions.dlq")
        return {rid: self.answers[rid] for rid in request_ids}

    def recommend(self, user_id: str, k: int = 10, timeout_s: float = 60.0) -> Answer:
        request_id = self.send(user_id, k)
        return self.wait([request_id], timeout_s)[request_id]

    def close(self) -> None:
        self._consumer.close()
        self._producer.flush(5)

    def __enter__(self) -> RecommendationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

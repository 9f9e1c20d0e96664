"""Helpers shared by integration and e2e tests: waiting on conditions, worker subprocesses, metrics, consumers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from streams.settings import Settings

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.2) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
        time.sleep(poll_s)
        last = condition()
    return last


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_env(settings: Settings) -> dict[str, str]:
    """The EXPLORER_* environment that reproduces `settings` in a subprocess."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, (tuple, list)):
            import json

            value = json.dumps(list(value))
        env[f"EXPLORER_{name.upper()}"] = str(value)
    return env


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    settings: Settings
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def get(self, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=2) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def metrics(self) -> dict[str, float]:
        """Prometheus samples by name{labels} (labels sorted), e.g. 'explorer_events_rejected_total{reason=x}'."""
        body = self.get("/metrics")
        samples: dict[str, float] = {}
        if body is None:
            return samples
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def run_worker(settings: Settings, log_dir: Path, ready_timeout_s: float = 90.0) -> Iterator[WorkerProcess]:
    """Start `explorer worker` as a real subprocess and wait until its partitions are assigned."""
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    log_path = log_dir / f"worker-{settings.web_port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    worker = WorkerProcess(process, settings, log_path)
    try:
        def assigned() -> bool:
            if not worker.alive():
                raise AssertionError(f"worker exited early:\n{worker.log_tail()}")
            body = worker.get("/health")
            return bool(body) and b'"assigned_partitions":[]' not in body

        wait_until(assigned, ready_timeout_s, "the worker to get its partitions")
        yield worker
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout_s)


def consume_all(settings: Settings, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Read a topic from the beginning until `expected` messages arrived, then check nothing beyond them exists."""
    from confluent_kafka import Consumer

    from streams.kafka_config import confluent_config

    consumer = Consumer(confluent_config(settings, **{
        "group.id": f"test-reader-{time.monotonic_ns()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }))
    try:
        consumer.subscribe([topic])
        messages = []
        deadline = time.monotonic() + timeout_s
        while len(messages) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error():
                    raise AssertionError(f"consumer error on {topic}: {message.error()}")
                messages.append(message)
        total = topic_size(settings, topic)
        assert total == len(messages), f"{topic} holds {total} messages, read {len(messages)} (expected {expected})"
        return messages
    finally:
        consumer.close()


def topic_size(settings: Settings, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from streams.kafka_config import confluent_config

    consumer = Consumer(confluent_config(settings, **{"group.id": "test-sizer"}))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        total = 0
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()

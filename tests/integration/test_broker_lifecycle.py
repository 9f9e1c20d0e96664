"""The local broker (infra/broker.py): start, keep data across a restart, stop; and its clear errors.

The lifecycle test runs its own broker on free ports in a temporary data dir, so it never touches a broker
on 9092. Its jars come from ~/.m2 after the first fetch on the machine (a copy, a few seconds).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.broker import BrokerError, LocalBroker
from streams.settings import Settings

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java 17+ on PATH")


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _settings(data_dir: Path) -> Settings:
    port, controller_port = _free_ports(2)
    return Settings(
        data_dir=data_dir, broker_port=port, broker_controller_port=controller_port, kafka_bootstrap=f"127.0.0.1:{port}"
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    local = LocalBroker(_settings(tmp_path))
    try:
        yield local
    finally:
        local.stop(timeout_s=10)  # never leave a JVM behind, whatever the test did


def _create_topic(bootstrap: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)]).values():
        future.result(timeout=30)


def _produce(bootstrap: str, topic: str, values: list[str]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for value in values:
        producer.produce(topic, key=b"k", value=value.encode())
    assert producer.flush(30) == 0


def _consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list[str]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"lifecycle-{time.time_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    values: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                values.append((message.value() or b"").decode())
    finally:
        consumer.close()
    return values


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.integration
@needs_java
def test_start_restart_keeps_topics_and_messages(broker: LocalBroker) -> None:
    first = broker.start()
    assert first.running
    assert first.pid is not None
    assert broker.start().pid == first.pid  # idempotent: no second JVM

    topic = "lifecycle"
    values = [f"message-{i}" for i in range(10)]
    _create_topic(first.bootstrap, topic)
    _produce(first.bootstrap, topic, values)

    assert broker.stop() is True
    assert _process_gone(first.pid)
    assert not broker.status().running
    assert broker.stop() is False  # nothing left to stop

    second = broker.start()
    assert second.running
    assert second.pid is not None
    assert second.pid != first.pid

    from confluent_kafka.admin import AdminClient

    assert topic in AdminClient({"bootstrap.servers": second.bootstrap}).list_topics(timeout=30).topics
    assert _consume_all(second.bootstrap, topic, expected=10) == values

    assert broker.stop() is True
    assert _process_gone(second.pid)


def test_missing_java_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(BrokerError, match=r"Java 17\+ is needed.*openjdk-17-jre-headless"):
        LocalBroker(_settings(tmp_path)).start()


def test_missing_maven_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    with pytest.raises(BrokerError, match=r"Maven is needed.*apt-get install maven"):
        LocalBroker(_settings(tmp_path)).ensure_distribution()


@needs_java
def test_port_taken_by_another_process_is_a_clear_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with socket.socket() as squatter:
        squatter.bind((settings.broker_host, settings.broker_port))
        squatter.listen()
        with pytest.raises(BrokerError, match=rf"port 127.0.0.1:{settings.broker_port} is already in use"):
            LocalBroker(settings).start(timeout_s=5)


def test_stale_pid_file_means_not_running(tmp_path: Path) -> None:
    broker = LocalBroker(_settings(tmp_path))
    broker.pid_file.parent.mkdir(parents=True)
    broker.pid_file.write_text("999999999\n")  # beyond any pid_max: that process cannot exist
    status = broker.status()
    assert not status.running and status.pid is None
    assert not broker.pid_file.exists()
    assert broker.stop() is False

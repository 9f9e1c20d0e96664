"""Against a secured broker: SASL/SCRAM-SHA-512 over TLS with client certificates required (mTLS), ACLs on.

A second local broker (its own data dir and free ports; the shared one on 9092 is not touched) gets a throwaway CA,
three SCRAM users and the ACLs of streams.acls: `worker` holds exactly the worker role, `client` the producer,
recommend-client and reader roles, `partial` the worker role minus one grant. Every client presents a certificate
with an encrypted key. The worker (Faust/aiokafka, a subprocess started through the CLI) counts a MovieLens slice
exactly and answers a recommendation request; `explorer replay`, `explorer recommend` and `explorer knowledge
export` (confluent-kafka) work through the same listener; a wrong password, an untrusted CA and a missing ACL each
stop `explorer worker` at start-up with a message naming the cause. No secret shows up in any output.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from pydantic import SecretStr

from infra import tls
from infra.broker import LocalBroker
from infra.broker_security import BrokerSecurity, generate
from models.clusters import load_serving
from models.reference import reference_counts
from streams.acls import ROLES, Grant, apply_grants, role_grants
from streams.app import consumer_group
from streams.movielens import load_ratings
from streams.settings import Settings
from streams.state_reader import read_state_counts
from streams.kafka_config import confluent_config
from streams.topics import INTERACTIONS, INTERACTIONS_DLQ, RECOMMENDATIONS, create_topics, topic_name
from tests.harness import consume_all, group_caught_up, run_worker, settings_env, wait_until
from tests.integration.test_broker_lifecycle import _free_ports, needs_java

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl (the throwaway CA)")
pytestmark = [pytest.mark.integration, needs_java, needs_openssl]

SLICE = 3_000  # MovieLens ratings replayed (in event-time order)


@dataclass(frozen=True)
class SecuredCluster:
    broker: LocalBroker
    security: BrokerSecurity
    passwords: dict[str, str]
    client_cert: tls.IssuedCertificate
    key_password: str
    other_ca: Path  # a CA that did not sign the broker's certificate

    def settings(self, base: Settings, user: str, **update: object) -> Settings:
        """`base` pointed at the SASL_SSL listener as `user`, with the client certificate."""
        return base.model_copy(update={
            "kafka_bootstrap": self.broker.secured_bootstrap, "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": user,
            "kafka_sasl_password": SecretStr(self.passwords[user]), "kafka_ssl_cafile": str(self.security.ca_file),
            "kafka_ssl_certfile": str(self.client_cert.cert), "kafka_ssl_keyfile": str(self.client_cert.key),
            "kafka_ssl_key_password": SecretStr(self.key_password), **update})

    def admin(self, base: Settings) -> Settings:
        """The super user: provisioning (topics, ACLs) and reading what no runtime role may read."""
        return self.settings(base, "worker", kafka_sasl_username=self.security.super_user,
                             kafka_sasl_password=SecretStr(self.security.super_password))

    def secrets(self) -> list[str]:
        return [*self.passwords.values(), self.security.super_password, self.security.keystore_password,
                self.key_password]


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[SecuredCluster]:
    root = tmp_path_factory.mktemp("secured-broker")
    plain_port, controller_port, sasl_port = _free_ports(3)
    passwords = {user: secrets.token_urlsafe(12) for user in ("worker", "client", "partial")}
    security = generate(root / "tls", sasl_port, passwords, client_auth="required")
    key_password = secrets.token_urlsafe(12)
    client_cert = security.client_certificate(root / "tls", "explorer-client", key_password=key_password)
    other_ca = tls.make_ca(root / "other-ca", name="someone else's CA").cert
    broker = LocalBroker(Settings(data_dir=root / "data", broker_port=plain_port, broker_controller_port=controller_port,
                                  kafka_bootstrap=f"127.0.0.1:{plain_port}"), security)
    started = time.monotonic()
    broker.ensure_distribution()
    try:
        broker.start()
        print(f"\nsecured broker started in {time.monotonic() - started:.1f}s")
        yield SecuredCluster(broker, security, passwords, client_cert, key_password, other_ca)
    finally:
        broker.stop(timeout_s=15)


@pytest.fixture(scope="module")
def deployment(secured, tmp_path_factory, serving_data_dir, movielens_dir) -> Settings:
    """Settings of one deployment on the secured cluster (no credentials yet): its topics exist (created by the
    super user) and every role's ACLs are granted."""
    data_dir = tmp_path_factory.mktemp("secured-data")
    for folder in ("clusters", "models"):
        shutil.copytree(serving_data_dir / folder, data_dir / folder)
    tag = uuid.uuid4().hex[:8]
    from tests.harness import free_port

    base = Settings(data_dir=data_dir, movielens_dir=movielens_dir, topic_prefix=f"sec-{tag}.",
                    app_id=f"explorer-sec-{tag}", interactions_partitions=2, web_port=free_port(),
                    llm_max_queue_wait_s=3_600.0)
    admin = secured.admin(base)
    create_topics(admin)
    granted, _ = cli(admin, "acls", "worker", "--principal", "User:worker", "--apply")  # what an operator runs
    assert granted.returncode == 0, granted.stderr
    assert f"granted {len(role_grants(base, 'worker'))} ACLs to User:worker" in granted.stderr
    for role in ROLES[1:]:
        apply_grants(admin, "User:client", role_grants(base, role))
    without = Grant("topic", topic_name(base, RECOMMENDATIONS), "WRITE")
    assert without in role_grants(base, "worker")
    apply_grants(admin, "User:partial", [g for g in role_grants(base, "worker") if g != without])
    return base


def cli(settings: Settings, *args: str, timeout_s: float = 180) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, **settings_env(settings)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    return done, time.monotonic() - started


def assert_no_secrets(secured: SecuredCluster, *texts: str) -> None:
    for text in texts:
        for value in secured.secrets():
            assert value not in text


def test_restricted_worker_counts_and_answers_through_sasl_ssl(secured, deployment, tmp_path):
    worker_settings = secured.settings(deployment, "worker")
    client_settings = secured.settings(deployment, "client")
    ratings = load_ratings(deployment.movielens_dir)[:SLICE]
    clusters = load_serving(deployment)
    started = time.monotonic()

    replay, _ = cli(client_settings, "replay", "movielens", "--limit", str(SLICE))
    assert replay.returncode == 0, replay.stderr
    assert f"published {SLICE} events" in replay.stdout

    with run_worker(worker_settings, tmp_path, ready_timeout_s=180) as worker:
        group = consumer_group(deployment, clusters.version)
        wait_until(lambda: group_caught_up(worker_settings, group, topic_name(deployment, INTERACTIONS)), 300,
                   "the restricted worker to commit the slice", poll_s=0.5)
        counted = time.monotonic()
        expected = reference_counts(ratings, clusters.cluster_of, deployment)
        actual = read_state_counts(client_settings, clusters.version)  # the reader role reads the changelog
        assert actual.total and actual.total == expected.total
        assert actual.daily == expected.daily and actual.trends == expected.trends

        user = max({r.user_id for r in ratings}, key=lambda u: sum(r.user_id == u for r in ratings))
        recommend, _ = cli(client_settings, "recommend", user, "--json", "--timeout", "120")
        assert recommend.returncode == 0, recommend.stderr
        answer = orjson.loads(recommend.stdout)
        assert answer["user_id"] == user
        assert answer["novel_cluster"]["id"] in clusters.clusters
        assert answer["novel_cluster"]["id"] not in answer["history_clusters"]
        assert answer["items"]

        export, _ = cli(client_settings, "knowledge", "export", "--format", "json")
        assert export.returncode == 0, export.stderr
        exported = orjson.loads(export.stdout)
        assert exported["clusters_version"] == clusters.version
        exported_total = sum(row["count"] for row in exported["transitions"]["all_time"])
        assert exported_total == sum(sum(row.values()) for row in expected.total.values())

        # a bad record is dead-lettered through the ACL-restricted producer of the worker, with no secret in it
        producer = Producer(confluent_config(client_settings))
        producer.produce(topic_name(deployment, INTERACTIONS), key=b"u-bad", value=b"{not json")
        assert producer.flush(30) == 0
        letters = consume_all(secured.admin(deployment), topic_name(deployment, INTERACTIONS_DLQ), expected=1)
        letter = letters[0].value().decode()
        assert orjson.loads(letter)["error"]

        metrics = worker.get("/metrics") or b""
        assert worker.alive(), worker.log_tail()
        log = worker.log_path.read_text(errors="replace")
    print(f"\nsecured pipeline: replay + worker catch-up {counted - started:.1f}s, "
          f"recommend + export {time.monotonic() - counted:.1f}s")
    assert_no_secrets(secured, replay.stdout, replay.stderr, recommend.stdout, recommend.stderr, export.stderr,
                      metrics.decode(), log, letter)


@pytest.mark.parametrize("case", ["wrong password", "untrusted CA", "no client certificate", "missing ACL"])
def test_misconfigured_worker_fails_fast_naming_the_cause(secured, deployment, case):
    settings = {
        "wrong password": lambda: secured.settings(deployment, "worker", kafka_sasl_password=SecretStr("wrong-pw")),
        "untrusted CA": lambda: secured.settings(deployment, "worker", kafka_ssl_cafile=str(secured.other_ca)),
        "no client certificate": lambda: secured.settings(deployment, "worker", kafka_ssl_certfile=None,
                                                          kafka_ssl_keyfile=None, kafka_ssl_key_password=None),
        "missing ACL": lambda: secured.settings(deployment, "partial"),
    }[case]()
    expected = {
        "wrong password": "SASL authentication failed at {bootstrap} for user 'worker' with SCRAM-SHA-512",
        "untrusted CA": "TLS handshake with {bootstrap} failed: the broker's certificate is not signed by a CA in "
                        f"EXPLORER_KAFKA_SSL_CAFILE={secured.other_ca}",
        "no client certificate": "TLS handshake with {bootstrap} failed: the broker requires a client certificate",
        "missing ACL": "User:partial is not authorized on {bootstrap}: missing WRITE on topic "
                       f"'{topic_name(deployment, RECOMMENDATIONS)}' (not even DESCRIBE",
    }[case].format(bootstrap=secured.broker.secured_bootstrap)

    done, seconds = cli(settings, "worker", timeout_s=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Kafka start-up check failed: " + expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    # fast: the cause is known after one round trip; what remains is Python importing the worker's modules
    assert seconds < deployment.kafka_check_timeout_s + 30, seconds
    assert_no_secrets(secured, done.stdout, done.stderr)


def test_a_producer_with_a_wrong_password_fails_fast_too(secured, deployment):
    settings = secured.settings(deployment, "client", kafka_sasl_password=SecretStr("nope"))
    done, _ = cli(settings, "replay", "movielens", "--limit", "10", timeout_s=120)
    assert done.returncode == 1
    assert "SASL authentication failed" in done.stderr and "'client'" in done.stderr, done.stderr


def test_explorer_settings_masks_the_secrets(secured, deployment):
    settings = secured.settings(deployment, "worker")
    done, _ = cli(settings, "settings")
    assert done.returncode == 0, done.stderr
    assert "EXPLORER_KAFKA_SASL_PASSWORD" in done.stdout and "***" in done.stdout
    assert_no_secrets(secured, done.stdout, done.stderr)


@pytest.mark.parametrize("case, expected", [
    ("wrong password", "SASL authentication failed at {bootstrap} for user 'worker' with SCRAM-SHA-512"),
    ("untrusted CA", "TLS handshake with {bootstrap} failed: the broker's certificate is not signed by a CA in "
                     "EXPLORER_KAFKA_SSL_CAFILE="),
    ("no client certificate", "A broker that closes a TLS connection right away often wants a client certificate"),
])
def test_the_faust_client_stack_reports_the_same_causes(secured, deployment, case, expected):
    """aiokafka (what Faust logs in with) fails on its own terms; the check names the cause for it too."""
    from streams.kafka_check import KafkaAccessError, _check_aiokafka_login

    settings = {
        "wrong password": lambda: secured.settings(deployment, "worker", kafka_sasl_password=SecretStr("wrong-pw")),
        "untrusted CA": lambda: secured.settings(deployment, "worker", kafka_ssl_cafile=str(secured.other_ca)),
        "no client certificate": lambda: secured.settings(deployment, "worker", kafka_ssl_certfile=None,
                                                          kafka_ssl_keyfile=None, kafka_ssl_key_password=None),
    }[case]()
    _check_aiokafka_login(secured.settings(deployment, "worker"), time.monotonic() + 10, 10)  # the right settings pass
    with pytest.raises(KafkaAccessError) as raised:
        _check_aiokafka_login(settings, time.monotonic() + 10, 10)
    assert expected.format(bootstrap=secured.broker.secured_bootstrap) in str(raised.value)
    assert_no_secrets(secured, str(raised.value))

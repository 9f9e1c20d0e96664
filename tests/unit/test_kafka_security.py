"""Security settings: one mapping to librdkafka and aiokafka/Faust, secrets that stay secret, clear start-up errors."""

from __future__ import annotations

import shutil
import ssl
import time

import pytest
from pydantic import ValidationError

from streams.kafka_config import (
    KafkaConfigError,
    aiokafka_auth,
    confluent_config,
    faust_broker_credentials,
    redact,
    ssl_context,
)
from streams.settings import Settings

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
PASSWORD = "s3cret-Pa55word"
KEY_PASSWORD = "key-Pa55word"


def secured(**update) -> Settings:
    values = dict(kafka_bootstrap="broker-1:9094,broker-2:9094", kafka_security_protocol="SASL_SSL",
                  kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="svc-worker", kafka_sasl_password=PASSWORD,
                  kafka_ssl_cafile="/etc/ca.pem")
    values.update(update)
    return Settings(**values)


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory):
    from infra import tls

    folder = tmp_path_factory.mktemp("tls")
    ca = tls.make_ca(folder)
    return ca, tls.issue(ca, folder, "svc-worker", key_password=KEY_PASSWORD)


def test_librdkafka_gets_sasl_tls_and_the_client_certificate():
    config = confluent_config(secured(kafka_ssl_certfile="/c.pem", kafka_ssl_keyfile="/c.key",
                                      kafka_ssl_key_password=KEY_PASSWORD, kafka_ssl_check_hostname=False))
    assert config == {
        "bootstrap.servers": "broker-1:9094,broker-2:9094", "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc-worker", "sasl.password": PASSWORD,
        "ssl.ca.location": "/etc/ca.pem", "ssl.certificate.location": "/c.pem", "ssl.key.location": "/c.key",
        "ssl.key.password": KEY_PASSWORD, "ssl.endpoint.identification.algorithm": "none",
    }


def test_plaintext_stays_as_it_was(default_env):
    assert confluent_config(Settings(), **{"group.id": "g"}) == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "plaintext", "group.id": "g"}
    assert faust_broker_credentials(Settings()) is None
    assert aiokafka_auth(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_a_key_inside_the_certificate_file_serves_both_clients():
    config = confluent_config(secured(kafka_ssl_certfile="/both.pem"))
    assert config["ssl.key.location"] == "/both.pem" and "ssl.key.password" not in config


@needs_openssl
def test_faust_gets_the_same_login_and_an_ssl_context_with_the_client_certificate(client_cert):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    ca, cert = client_cert
    settings = secured(kafka_ssl_cafile=str(ca.cert), kafka_ssl_certfile=str(cert.cert),
                       kafka_ssl_keyfile=str(cert.key), kafka_ssl_key_password=KEY_PASSWORD)
    auth = credentials_to_aiokafka_auth(faust_broker_credentials(settings))
    assert (auth["security_protocol"], auth["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("svc-worker", PASSWORD)
    context = auth["ssl_context"]
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert {"commonName": "interest-explorer throwaway CA"} in [dict(p[0] for p in c["subject"])
                                                                  for c in context.get_ca_certs()]
    direct = aiokafka_auth(settings)
    assert {k: v for k, v in direct.items() if k != "ssl_context"} == {k: v for k, v in auth.items()
                                                                        if k != "ssl_context"}
    assert PASSWORD not in repr(faust_broker_credentials(settings))


@needs_openssl
def test_a_wrong_key_password_is_a_clear_error_without_the_password(client_cert):
    ca, cert = client_cert
    settings = secured(kafka_ssl_cafile=str(ca.cert), kafka_ssl_certfile=str(cert.cert),
                       kafka_ssl_keyfile=str(cert.key), kafka_ssl_key_password="not-the-key-password")
    with pytest.raises(KafkaConfigError, match="cannot load the client certificate EXPLORER_KAFKA_SSL_CERTFILE=.*"
                                               r"is EXPLORER_KAFKA_SSL_KEY_PASSWORD right\?") as raised:
        ssl_context(settings)
    assert "not-the-key-password" not in str(raised.value)
    with pytest.raises(KafkaConfigError, match="an encrypted key needs EXPLORER_KAFKA_SSL_KEY_PASSWORD"):
        ssl_context(settings.model_copy(update={"kafka_ssl_key_password": None}))


def test_a_missing_ca_file_is_named():
    with pytest.raises(KafkaConfigError, match="EXPLORER_KAFKA_SSL_CAFILE=/nowhere/ca.pem"):
        ssl_context(secured(kafka_ssl_cafile="/nowhere/ca.pem"))


def test_secrets_are_masked_in_repr_dumps_and_validation_errors():
    settings = secured(kafka_ssl_certfile="/c.pem", kafka_ssl_key_password=KEY_PASSWORD)
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert PASSWORD not in text and KEY_PASSWORD not in text
    with pytest.raises(ValidationError) as raised:
        secured(requests_partitions=3)  # any invalid setting: the error shows the model, secrets masked
    assert PASSWORD not in str(raised.value)
    assert redact(f"login as svc-worker/{PASSWORD} failed", settings) == "login as svc-worker/*** failed"


def test_the_worker_subprocess_environment_carries_the_real_secrets(monkeypatch):
    from streams.worker_process import settings_env

    settings = secured(kafka_ssl_certfile="/c.pem", kafka_ssl_key_password=KEY_PASSWORD)
    env = settings_env(settings)
    assert env["EXPLORER_KAFKA_SASL_PASSWORD"] == PASSWORD
    assert env["EXPLORER_KAFKA_SSL_KEY_PASSWORD"] == KEY_PASSWORD
    for name, value in env.items():  # what the child process reads back
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_explorer_settings_prints_secrets_masked(monkeypatch):
    from typer.testing import CliRunner

    from streams import cli

    monkeypatch.setattr(cli, "get_settings", lambda: secured())
    result = CliRunner().invoke(cli.app, ["settings"])
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert any("EXPLORER_KAFKA_SASL_PASSWORD" in line and "***" in line for line in result.output.splitlines())


@pytest.mark.parametrize("update, message", [
    ({"kafka_sasl_mechanism": None}, "SASL_SSL needs EXPLORER_KAFKA_SASL_MECHANISM"),
    ({"kafka_sasl_password": None}, "SASL_SSL needs EXPLORER_KAFKA_SASL_PASSWORD"),
    ({"kafka_security_protocol": "PLAINTEXT"}, "EXPLORER_KAFKA_SSL_CAFILE only apply to TLS"),
    ({"kafka_ssl_keyfile": "/k.pem"}, "set EXPLORER_KAFKA_SSL_CERTFILE too"),
    ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
])
def test_inconsistent_security_settings_are_refused_by_name(update, message):
    with pytest.raises(ValidationError, match=message) as raised:
        secured(**update)
    assert PASSWORD not in str(raised.value)


def test_mechanism_and_protocol_are_case_insensitive():
    settings = secured(kafka_security_protocol="sasl_ssl", kafka_sasl_mechanism="scram-sha-256")
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")


# --- the start-up check's messages -------------------------------------------------------------------------------


def test_login_failures_are_classified_and_name_the_setting():
    from confluent_kafka import KafkaError

    from streams.kafka_check import _login_failure

    settings = secured()
    auth = _login_failure(settings, KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: invalid"))
    assert "SASL authentication failed at broker-1:9094,broker-2:9094 for user 'svc-worker'" in auth
    assert "EXPLORER_KAFKA_SASL_PASSWORD" in auth
    untrusted = _login_failure(settings, KafkaError(KafkaError._SSL, "SSL handshake failed: certificate verify failed"))
    assert "not signed by a CA in EXPLORER_KAFKA_SSL_CAFILE=/etc/ca.pem" in untrusted
    no_cert = _login_failure(settings, KafkaError(KafkaError._TRANSPORT, "ssl/tls alert bad certificate"))
    assert "requires a client certificate (mTLS): set EXPLORER_KAFKA_SSL_CERTFILE" in no_cert
    refused = KafkaError(KafkaError._TRANSPORT, "Connect to ipv4#10.0.0.1:9094 failed: Connection refused")
    assert _login_failure(settings, refused) is None  # transient: retried until the deadline


def test_an_unreachable_cluster_fails_within_the_check_timeout():
    from streams.kafka_check import KafkaAccessError, check_kafka

    started = time.monotonic()
    with pytest.raises(KafkaAccessError, match=r"cannot reach Kafka at 127.0.0.1:1 within 1s .*Connection refused"):
        check_kafka(Settings(kafka_bootstrap="127.0.0.1:1"), timeout_s=1.0)
    assert time.monotonic() - started < 5


# --- ACLs ---------------------------------------------------------------------------------------------------------


def test_the_worker_role_covers_what_the_worker_checks():
    from streams import acls

    settings = Settings(topic_prefix="p.", app_id="ie")
    grants = acls.role_grants(settings, "worker")
    group = "ie.c40-abc"
    state = [f"{group}-transitions-c40-abc-changelog", f"{group}-__assignor-__leader"]
    access = acls.worker_access(settings, group, state)
    for topic, operations in access.topics.items():
        for operation in operations:
            assert any(g.resource == "topic" and g.operation == operation and
                       (topic.startswith(g.name) if g.prefixed else topic == g.name) for g in grants), (topic, operation)
    assert all(any(g.resource == "topic" and g.operation == "CREATE" and t.startswith(g.name) for g in grants)
               for t in access.may_create)
    assert acls.Grant("group", "ie", "READ", prefixed=True) in grants
    assert {"READ", "WRITE"} == set(access.topics[f"{group}-interactions-repartition"])
    assert f"{group}-recommendation-requests-repartition" in access.may_create
    # and nothing beyond: the worker cannot read the answers or write the interactions
    assert acls.Grant("topic", "p.recommendations", "READ") not in grants
    assert acls.Grant("topic", "p.interactions", "WRITE") not in grants


def test_kafka_acls_commands_render_prefixed_patterns():
    from streams.acls import kafka_acls_commands, role_grants

    lines = kafka_acls_commands(role_grants(Settings(app_id="ie"), "reader"), "User:analyst", "k:9094")
    assert lines == ["kafka-acls.sh --bootstrap-server k:9094 --command-config admin.properties --add "
                     "--allow-principal User:analyst --operation Read --topic ie --resource-pattern-type prefixed"]
    worker = kafka_acls_commands(role_grants(Settings(app_id="ie"), "worker"), "User:w", "k:9094")
    # kafka-acls.sh spells it DescribeConfigs: a wrong spelling would be an operator's failed command
    assert any("--operation DescribeConfigs --topic interactions.dlq" in line for line in worker)


def test_broker_security_properties_turn_acls_on_and_keep_secrets_out_of_errors(tmp_path):
    from infra.broker_security import AUTHORIZER, BrokerSecurity

    security = BrokerSecurity(port=9094, keystore=tmp_path / "b.p12", keystore_password="ks-pw", ca_file=tmp_path / "ca",
                              super_user="admin", super_password="admin-pw", users={"worker": "worker-pw"},
                              client_auth="required")
    props = security.server_properties("127.0.0.1", 9092, 9093)
    assert props["authorizer.class.name"] == AUTHORIZER and props["super.users"] == "User:admin"
    assert props["listener.name.sasl_ssl.ssl.client.auth"] == "required"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094"
    assert security.format_arguments() == ["--add-scram", "SCRAM-SHA-512=[name=admin,password=admin-pw]",
                                           "--add-scram", "SCRAM-SHA-512=[name=worker,password=worker-pw]"]
    assert security.redact("bad arg worker-pw / admin-pw") == "bad arg *** / ***"
    assert "pw" not in repr(security)
    with pytest.raises(ValueError, match="may only use letters"):
        BrokerSecurity(port=1, keystore=tmp_path, keystore_password="x", ca_file=tmp_path, super_user="admin",
                       super_password='quote"breaks-jaas')

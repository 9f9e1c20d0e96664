"""Client configuration derived from Settings, so every Kafka client speaks to the cluster the same way.

Two client stacks take the same settings differently: librdkafka (confluent-kafka: producers, consumers, the admin
client) reads files and passwords from its config dict; aiokafka (the Faust worker's consumer, producer and the admin
requests that create its changelog topics) wants an `ssl.SSLContext` and SASL credentials. Both are built here,
from one place, with the same defaults: hostname verification on, the mechanism named explicitly.
"""

from __future__ import annotations

import ssl
from typing import Any

from streams.settings import Settings


class KafkaConfigError(ValueError):
    """The security settings cannot be turned into a client configuration (unreadable certificate or key...)."""


def secret(value: Any) -> str | None:
    """The plain value of a SecretStr setting (or None)."""
    return value.get_secret_value() if value is not None else None


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the settings: what must never appear in a log line or error message."""
    return [v for v in (secret(settings.kafka_sasl_password), secret(settings.kafka_ssl_key_password)) if v]


def redact(text: str, settings: Settings) -> str:
    for value in secrets_of(settings):
        text = text.replace(value, "***")
    return text


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL_")


def confluent_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka configuration (producers, consumers, admin) with the cluster's security settings."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol.lower(),
    }
    if uses_sasl(settings):
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = secret(settings.kafka_sasl_password)
    if uses_tls(settings):
        if settings.kafka_ssl_cafile:
            config["ssl.ca.location"] = settings.kafka_ssl_cafile
        if settings.kafka_ssl_certfile:
            config["ssl.certificate.location"] = settings.kafka_ssl_certfile
            config["ssl.key.location"] = settings.kafka_ssl_keyfile or settings.kafka_ssl_certfile
            if settings.kafka_ssl_key_password is not None:
                config["ssl.key.password"] = secret(settings.kafka_ssl_key_password)
        config["ssl.endpoint.identification.algorithm"] = "https" if settings.kafka_ssl_check_hostname else "none"
    config.update(overrides)
    return config


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context aiokafka uses: the CA file (or the system's CAs), the client certificate for mTLS."""
    try:
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise KafkaConfigError(f"cannot read the CA bundle EXPLORER_KAFKA_SSL_CAFILE={settings.kafka_ssl_cafile}: "
                               f"{exc}") from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile:
        try:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile,
                                    password=secret(settings.kafka_ssl_key_password))
        except (OSError, ssl.SSLError) as exc:
            hint = (" (is EXPLORER_KAFKA_SSL_KEY_PASSWORD right?)" if settings.kafka_ssl_key_password is not None
                    else " (an encrypted key needs EXPLORER_KAFKA_SSL_KEY_PASSWORD)")
            raise KafkaConfigError(
                f"cannot load the client certificate EXPLORER_KAFKA_SSL_CERTFILE={settings.kafka_ssl_certfile} with "
                f"its key {settings.kafka_ssl_keyfile or '(in the certfile)'}{hint}: {exc}") from None
    return context


def aiokafka_auth(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of aiokafka's clients (AIOKafkaClient, consumer, producer) for the security settings."""
    kwargs: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if uses_tls(settings):
        kwargs["ssl_context"] = ssl_context(settings)
    if uses_sasl(settings):
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=secret(settings.kafka_sasl_password))
    return kwargs


def faust_broker_credentials(settings: Settings) -> Any:
    """Faust's credentials object (it hands them to aiokafka's consumer, producer and admin requests), or None for
    plaintext. Faust derives the protocol from the object: SASL with an SSL context is SASL_SSL."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings) if uses_tls(settings) else None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=secret(settings.kafka_sasl_password),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=context,
    )

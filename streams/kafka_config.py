"""Client configuration derived from Settings, so every Kafka client speaks to the cluster the same way."""

from __future__ import annotations

import ssl
from typing import Any

from streams.settings import Settings


def confluent_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """librdkafka configuration (producers, consumers, admin) with the cluster's security settings."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "security.protocol": settings.kafka_security_protocol.lower(),
    }
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username is not None:
        config["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password is not None:
        config["sasl.password"] = settings.kafka_sasl_password
    if settings.kafka_ssl_cafile:
        config["ssl.ca.location"] = settings.kafka_ssl_cafile
    config.update(overrides)
    return config


def faust_broker_credentials(settings: Settings) -> Any:
    """Faust (aiokafka) credentials object for the configured security protocol, or None for plaintext."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if protocol in ("SSL", "SASL_SSL"):
        ssl_context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context)
    mechanism = (settings.kafka_sasl_mechanism or "PLAIN").upper()
    if mechanism.startswith("SCRAM"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            mechanism=mechanism,
            ssl_context=ssl_context,
        )
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password,
        ssl_context=ssl_context,
    )

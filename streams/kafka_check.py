"""The start-up check of every command that talks to Kafka: connect, authenticate, check permissions, or fail fast.

Left alone, both client stacks hide a misconfigured secured cluster: librdkafka retries a failed SASL login or TLS
handshake until some later timeout says only "transport failure", and aiokafka logs the cause and raises "unable to
bootstrap" (Faust then retries). `check_kafka` connects with a short deadline, reads librdkafka's error callback
for the real cause, and turns it into one `KafkaAccessError` naming what failed and which setting to look at:

- the SASL login (wrong user or password, wrong mechanism),
- the TLS handshake (a broker certificate the CA file does not vouch for, a hostname it does not name, a broker
  that wants a client certificate),
- permissions (ACLs): each topic the command reads or writes, each consumer group it uses, each topic it may have
  to create, checked without side effects: the topics' and groups' authorized operations (KIP-430) and a
  validate-only CreateTopics. All missing permissions are listed at once.

With `aiokafka=True` (the Faust worker) the same login is also done by aiokafka itself, so a setting one stack
reads differently from the other fails here too. Secrets never appear in the messages (streams.kafka_config.redact).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from streams.kafka_config import (
    KafkaConfigError,
    aiokafka_auth,
    confluent_config,
    redact,
    uses_sasl,
    uses_tls,
)
from streams.settings import Settings

READ, WRITE, CREATE = "READ", "WRITE", "CREATE"


class KafkaAccessError(RuntimeError):
    """The cluster cannot be used as configured; the message names what failed and what to check."""


@dataclass(frozen=True)
class Access:
    """What one command needs from the cluster (topic and group names as deployed, i.e. with the prefix)."""

    topics: Mapping[str, frozenset[str]] = field(default_factory=dict)  # topic -> operations (READ, WRITE)
    groups: frozenset[str] = frozenset()  # consumer groups it joins or commits offsets for (READ)
    may_create: frozenset[str] = frozenset()  # topics it creates when missing (CREATE is checked then)
    optional: frozenset[str] = frozenset()  # topics whose absence the command reports itself, more clearly

    @staticmethod
    def of(read: Iterable[str] = (), write: Iterable[str] = (), groups: Iterable[str] = (),
           may_create: Iterable[str] = (), optional: Iterable[str] = ()) -> Access:
        topics: dict[str, set[str]] = {}
        for name in read:
            topics.setdefault(name, set()).add(READ)
        for name in write:
            topics.setdefault(name, set()).add(WRITE)
        return Access({k: frozenset(v) for k, v in topics.items()}, frozenset(groups), frozenset(may_create),
                      frozenset(optional))


def check_kafka(settings: Settings, access: Access = Access(), *, aiokafka: bool = False,
                timeout_s: float | None = None) -> None:
    """Raise KafkaAccessError unless the cluster accepts these settings and grants `access`."""
    timeout = settings.kafka_check_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    try:
        admin = _connect(settings, deadline, timeout)
        if aiokafka:
            _check_aiokafka_login(settings, deadline, timeout)
        missing, absent = _missing_permissions(settings, admin, access, deadline)
    except KafkaConfigError as exc:
        raise KafkaAccessError(redact(str(exc), settings)) from None
    problems = []
    if missing:
        problems.append(f"{_principal(settings)} is not authorized on {settings.kafka_bootstrap}: missing "
                        + "; ".join(missing)
                        + ". An operator grants them with ACLs (README, 'Secured clusters'; `explorer acls` "
                          "prints them)")
    if absent:
        problems.append(f"topic(s) {', '.join(map(repr, absent))} do not exist on {settings.kafka_bootstrap}: run "
                        "`explorer topics create` (as a principal allowed to create them)")
    if problems:
        raise KafkaAccessError(redact(". ".join(problems), settings))


# --- connecting and logging in (librdkafka) ---------------------------------------------------------------------


def _connect(settings: Settings, deadline: float, timeout: float):  # -> AdminClient
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list[KafkaError] = []
    try:
        admin = AdminClient(confluent_config(
            settings, error_cb=errors.append, logger=_QUIET,  # the cause is reported once, below, not per retry
            **{"reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 1000}))
    except KafkaException as exc:  # e.g. an unreadable key: librdkafka checks its files when the client is made
        raise KafkaAccessError(redact(f"invalid Kafka client settings: {exc.args[0].str()}", settings)) from None
    last: str | None = None
    attempt = 0.25  # short first: a failed login is reported (error callback) within a few hundred ms
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(attempt, deadline - time.monotonic())))
            return admin
        except KafkaException as exc:
            last = last or exc.args[0].str()
        attempt = 1.0
        admin.poll(0)  # serves the error callback
        for error in errors:
            fatal = _login_failure(settings, error)
            if fatal:
                raise KafkaAccessError(redact(fatal, settings))
            if error.code() != KafkaError._ALL_BROKERS_DOWN:  # says less than the error before it
                last = error.str()
        errors.clear()
        if time.monotonic() >= deadline:
            raise KafkaAccessError(redact(
                f"cannot reach Kafka at {settings.kafka_bootstrap} within {timeout:g}s "
                f"(EXPLORER_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}): {last}. Check "
                "EXPLORER_KAFKA_BOOTSTRAP and that this listener speaks that protocol", settings))


def _login_failure(settings: Settings, error: Any) -> str | None:
    """A message for errors that retrying cannot fix (authentication, TLS); None for the transient ones."""
    from confluent_kafka import KafkaError

    text = error.str()
    if error.code() == KafkaError._AUTHENTICATION:
        return _sasl_failure(settings, text)
    if error.code() == KafkaError._SSL:
        return _tls_failure(settings, text)
    if uses_tls(settings) and any(alert in text for alert in _CLIENT_CERT_ALERTS):
        return _client_cert_refused(settings, text)
    return None


def _sasl_failure(settings: Settings, detail: str) -> str:
    return (f"SASL authentication failed at {settings.kafka_bootstrap} for user {settings.kafka_sasl_username!r} "
            f"with {settings.kafka_sasl_mechanism}: check EXPLORER_KAFKA_SASL_USERNAME, EXPLORER_KAFKA_SASL_PASSWORD "
            f"and EXPLORER_KAFKA_SASL_MECHANISM (broker said: {detail})")


def _tls_failure(settings: Settings, detail: str) -> str:
    if "verify failed" in detail or "CERTIFICATE_VERIFY_FAILED" in detail:
        if "match" in detail or "hostname" in detail.lower() or "IP address" in detail:
            why = (f"the broker's certificate does not name the host in EXPLORER_KAFKA_BOOTSTRAP "
                   f"({settings.kafka_bootstrap}); connect by a name it carries, or set "
                   "EXPLORER_KAFKA_SSL_CHECK_HOSTNAME=false if you must")
        else:
            trusted = (f"EXPLORER_KAFKA_SSL_CAFILE={settings.kafka_ssl_cafile}" if settings.kafka_ssl_cafile
                       else "the system's CA certificates (EXPLORER_KAFKA_SSL_CAFILE is not set)")
            why = f"the broker's certificate is not signed by a CA in {trusted}"
        return f"TLS handshake with {settings.kafka_bootstrap} failed: {why} ({detail})"
    return f"TLS handshake with {settings.kafka_bootstrap} failed: {detail}"


def _client_cert_refused(settings: Settings, detail: str) -> str:
    given = (f"EXPLORER_KAFKA_SSL_CERTFILE={settings.kafka_ssl_certfile} was refused: is it signed by a CA the "
             "broker trusts, and not expired?" if settings.kafka_ssl_certfile
             else "set EXPLORER_KAFKA_SSL_CERTFILE and EXPLORER_KAFKA_SSL_KEYFILE")
    return (f"TLS handshake with {settings.kafka_bootstrap} failed: the broker requires a client certificate "
            f"(mTLS): {given} ({detail})")


# TLS alerts a broker sends when it rejects (or wants) a client certificate
_CLIENT_CERT_ALERTS = ("alert bad certificate", "alert certificate required", "alert unknown ca",
                       "alert certificate unknown")


class _Quiet(logging.Logger):
    def handle(self, record: logging.LogRecord) -> None:
        pass


_QUIET = _Quiet("streams.kafka_check.librdkafka")


# --- the same login through aiokafka (what Faust uses) ----------------------------------------------------------


def _check_aiokafka_login(settings: Settings, deadline: float, timeout: float) -> None:
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError as AioKafkaError

    auth = aiokafka_auth(settings)
    last: str = "no bootstrap address"
    for host, port in _bootstrap_addresses(settings.kafka_bootstrap):
        async def connect() -> None:
            conn = await create_conn(host, port, request_timeout_ms=int(timeout * 1000), **auth)
            conn.close()

        try:
            asyncio.run(asyncio.wait_for(connect(), max(0.5, deadline - time.monotonic())))
            return
        except ssl.SSLCertVerificationError as exc:
            raise KafkaAccessError(redact(_tls_failure(settings, f"aiokafka: {exc.verify_message}: {exc}"),
                                          settings)) from None
        except ssl.SSLError as exc:
            if any(alert in str(exc).lower().replace("_", " ") for alert in _CLIENT_CERT_ALERTS):
                raise KafkaAccessError(redact(_client_cert_refused(settings, f"aiokafka: {exc}"), settings)) from None
            raise KafkaAccessError(redact(_tls_failure(settings, f"aiokafka: {exc}"), settings)) from None
        except AioKafkaError as exc:
            if type(exc).__name__ in ("SaslAuthenticationFailed", "UnsupportedSaslMechanismError",
                                      "IllegalSaslStateError"):
                raise KafkaAccessError(redact(_sasl_failure(settings, f"aiokafka: {exc}"), settings)) from None
            last = f"{type(exc).__name__}: {exc}"
        except (OSError, asyncio.TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
    hint = (" A broker that closes a TLS connection right away often wants a client certificate "
            "(EXPLORER_KAFKA_SSL_CERTFILE)." if uses_tls(settings) and not settings.kafka_ssl_certfile else "")
    raise KafkaAccessError(redact(
        f"the Faust worker's client (aiokafka) cannot log in to {settings.kafka_bootstrap} although librdkafka "
        f"can: {last}.{hint}", settings))


def _bootstrap_addresses(bootstrap: str) -> list[tuple[str, int]]:
    addresses = []
    for entry in bootstrap.split(","):
        entry = entry.strip().removeprefix("kafka://")
        if entry:
            host, _, port = entry.rpartition(":")
            addresses.append((host.strip("[]") or "127.0.0.1", int(port or 9092)))
    return addresses


# --- permissions (ACLs) ---------------------------------------------------------------------------------------


def _missing_permissions(settings: Settings, admin: Any, access: Access,
                         deadline: float) -> tuple[list[str], list[str]]:
    """(missing permissions, required topics that do not exist)."""
    from confluent_kafka import KafkaError, KafkaException, TopicCollection
    from confluent_kafka.admin import NewTopic

    missing: list[str] = []
    absent: list[str] = []
    names = sorted(set(access.topics) | set(access.may_create))
    if names:
        futures = admin.describe_topics(TopicCollection(names), include_authorized_operations=True,
                                        request_timeout=_left(deadline))
        for name in names:
            wanted = sorted(access.topics.get(name, ()))
            try:
                allowed = {op.name for op in futures[name].result().authorized_operations or ()}
            except KafkaException as exc:
                code = exc.args[0].code()
                if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:  # not even DESCRIBE
                    missing.append(f"{'+'.join(wanted or [CREATE])} on topic {name!r} (not even DESCRIBE: "
                                   "it may not exist either)")
                elif code == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    absent.append(name)
                else:
                    raise KafkaAccessError(f"cannot describe topic {name!r}: {exc.args[0].str()}") from None
                continue
            lacking = [op for op in wanted if op not in allowed]
            if lacking:
                missing.append(f"{'+'.join(lacking)} on topic {name!r}")
    creatable = [name for name in absent if name in access.may_create]
    if creatable:
        futures = admin.create_topics([NewTopic(name, 1, 1) for name in creatable], validate_only=True,
                                      request_timeout=_left(deadline))
        for name in creatable:
            try:
                futures[name].result()
            except KafkaException as exc:
                code = exc.args[0].code()
                if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
                    missing.append(f"CREATE on topic {name!r} (it does not exist yet)")
                # any other answer (replication factor, policy...) is for the real creation to report
    for group in sorted(access.groups):
        allowed_ops = _group_operations(admin, group, deadline)
        if allowed_ops is None or READ not in allowed_ops:
            missing.append(f"READ on group {group!r}")
    return missing, [name for name in absent if name not in access.may_create | access.optional]


def _group_operations(admin: Any, group: str, deadline: float) -> set[str] | None:
    """The operations allowed on `group`; None when not even DESCRIBE is. Retries while the coordinator loads."""
    from confluent_kafka import KafkaError, KafkaException

    not_ready = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                 KafkaError.COORDINATOR_NOT_AVAILABLE}
    while True:
        future = admin.describe_consumer_groups([group], include_authorized_operations=True,
                                                request_timeout=_left(deadline))[group]
        try:
            return {op.name for op in future.result().authorized_operations or ()}
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
                return None
            if code not in not_ready or time.monotonic() >= deadline:
                raise KafkaAccessError(f"cannot describe consumer group {group!r}: {exc.args[0].str()}") from None
            time.sleep(0.2)


def _left(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


def _principal(settings: Settings) -> str:
    if uses_sasl(settings):
        return f"User:{settings.kafka_sasl_username}"
    if settings.kafka_ssl_certfile:
        return f"the principal of the client certificate {settings.kafka_ssl_certfile}"
    return "User:ANONYMOUS"

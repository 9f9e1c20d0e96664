"""The local broker's optional secured side: an extra SASL_SSL listener (SCRAM-SHA-512 over TLS) and ACLs.

With a `BrokerSecurity`, infra.broker.LocalBroker adds to its usual listeners

  SASL_SSL://host:port   SCRAM-SHA-512 over TLS (the throwaway CA of infra.tls); also the inter-broker listener,
                         where the broker authenticates as the super user
  CONTROLLER             SASL_PLAINTEXT with PLAIN (KRaft controllers cannot use SCRAM: its credentials live in
                         the metadata log they serve), the broker again as the super user

and turns ACLs on (StandardAuthorizer, `allow.everyone.if.no.acl.found` left false). The PLAINTEXT listener stays
(readiness checks and a local admin's habits), but its principal, User:ANONYMOUS, is granted nothing: every client
that wants data authenticates on the SASL_SSL listener. The super user exists for provisioning (topics, ACLs);
SCRAM users are created with Kafka's own StorageTool (`format --add-scram`) when the storage is first formatted.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from infra import tls

MECHANISM = "SCRAM-SHA-512"
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
ClientAuth = Literal["none", "requested", "required"]


@dataclass(frozen=True)
class BrokerSecurity:
    port: int  # of the SASL_SSL listener
    keystore: Path  # PKCS#12: the broker's key and certificate chain
    keystore_password: str = field(repr=False)
    ca_file: Path  # PEM: the CA clients' certificates must chain to (ssl.client.auth), and what clients trust
    super_user: str
    super_password: str = field(repr=False)
    users: Mapping[str, str] = field(default_factory=dict, repr=False)  # SCRAM users: name -> password
    client_auth: ClientAuth = "none"  # "required": every client also presents a certificate (mTLS)
    ca_key: Path | None = None  # set by `generate`: lets `client_certificate` sign certificates for clients

    def client_certificate(self, folder: Path, name: str, key_password: str | None = None) -> tls.IssuedCertificate:
        """A client certificate (CN=name) the broker trusts, for mTLS; the key encrypted when a password is given."""
        if self.ca_key is None:
            raise ValueError("this BrokerSecurity was not made by generate(): its CA key is unknown")
        return tls.issue(tls.CertificateAuthority(self.ca_file, self.ca_key), folder, name, key_password=key_password)

    def __post_init__(self) -> None:
        # the passwords are written into JAAS lines and StorageTool arguments: keep them to characters that need
        # no quoting in either place
        for name, password in {self.super_user: self.super_password, **self.users}.items():
            if not name or not password or not set(name + password) <= _SAFE:
                raise ValueError(f"SCRAM user {name!r}: names and passwords may only use letters, digits, '-', '_'")

    def server_properties(self, host: str, plaintext_port: int, controller_port: int) -> dict[str, str]:
        """What LocalBroker's server.properties gets on top of (and instead of) its plaintext listeners."""
        sasl = "listener.name.sasl_ssl."
        return {
            "listeners": f"PLAINTEXT://{host}:{plaintext_port},CONTROLLER://{host}:{controller_port},"
                         f"SASL_SSL://{host}:{self.port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{plaintext_port},SASL_SSL://{host}:{self.port}",
            "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{self.super_user}" password="{self.super_password}" '
                f'user_{self.super_user}="{self.super_password}";',
            f"{sasl}sasl.enabled.mechanisms": MECHANISM,
            f"{sasl}{MECHANISM.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{self.super_user}" password="{self.super_password}";',
            f"{sasl}ssl.keystore.type": "PKCS12",
            f"{sasl}ssl.keystore.location": str(self.keystore),
            f"{sasl}ssl.keystore.password": self.keystore_password,
            f"{sasl}ssl.truststore.type": "PEM",
            f"{sasl}ssl.truststore.location": str(self.ca_file),
            f"{sasl}ssl.client.auth": self.client_auth,
            "authorizer.class.name": AUTHORIZER,
            "super.users": f"User:{self.super_user}",
        }

    def redact(self, text: str) -> str:
        for secret in (self.super_password, self.keystore_password, *self.users.values()):
            text = text.replace(secret, "***")
        return text

    def format_arguments(self) -> list[str]:
        """StorageTool `format` arguments that create every SCRAM user (the super user first)."""
        args: list[str] = []
        for name, password in {self.super_user: self.super_password, **self.users}.items():
            args += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return args


def generate(folder: Path, port: int, users: Mapping[str, str] | None = None, *, host: str = "127.0.0.1",
             client_auth: ClientAuth = "none", super_user: str = "admin") -> BrokerSecurity:
    """A fresh throwaway CA, broker certificate (subjectAltName: host and localhost) and random passwords."""
    ca = tls.make_ca(folder)
    broker = tls.issue(ca, folder, "broker", hosts=tuple(dict.fromkeys((host, "localhost"))))
    keystore_password = secrets.token_urlsafe(18)
    keystore = tls.pkcs12_keystore(broker, folder / "broker.p12", keystore_password)
    return BrokerSecurity(port=port, keystore=keystore, keystore_password=keystore_password, ca_file=ca.cert,
                          super_user=super_user, super_password=secrets.token_urlsafe(18), users=dict(users or {}),
                          client_auth=client_auth, ca_key=ca.key)


_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")

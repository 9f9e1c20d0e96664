"""A throwaway certificate authority for the local secured broker, made with the `openssl` command line.

`make_ca` writes a self-signed CA; `issue` signs a key pair for a broker (subjectAltName = its host) or for a
client (mTLS; the key may be encrypted with a password). Everything is PEM, which both librdkafka and Python's
ssl module read; `pkcs12_keystore` bundles a broker's key and chain into the PKCS#12 keystore the JVM reads.
Nothing here is meant for production: the CA key sits unencrypted next to the certificates, 0600.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = 30  # throwaway: long enough for a dev broker, short enough to be obviously not production


class TlsError(RuntimeError):
    """openssl is missing or refused; the message carries its output."""


@dataclass(frozen=True)
class CertificateAuthority:
    cert: Path  # PEM: what clients trust (EXPLORER_KAFKA_SSL_CAFILE)
    key: Path


@dataclass(frozen=True)
class IssuedCertificate:
    cert: Path  # PEM: the leaf certificate followed by the CA certificate
    key: Path  # PEM private key (PKCS#8; encrypted when issued with a password)
    common_name: str


def make_ca(folder: Path, name: str = "interest-explorer throwaway CA") -> CertificateAuthority:
    folder.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority(folder / "ca.pem", folder / "ca.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(DAYS), "-subj", f"/CN={name}",
             "-keyout", str(ca.key), "-out", str(ca.cert),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(ca.key, 0o600)
    return ca


def issue(ca: CertificateAuthority, folder: Path, common_name: str, *, hosts: tuple[str, ...] = (),
          key_password: str | None = None) -> IssuedCertificate:
    """A certificate for `common_name` signed by `ca`; `hosts` become its subjectAltNames (DNS names or IPs)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / common_name
    key, csr, cert = stem.with_suffix(".key"), stem.with_suffix(".csr"), stem.with_suffix(".pem")
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key))
    os.chmod(key, 0o600)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={common_name}", "-out", str(csr))
    extensions = folder / f"{common_name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             # a broker's certificate also authenticates it as a client (inter-broker TLS)
             "extendedKeyUsage=serverAuth,clientAuth"]
    if hosts:
        lines.append("subjectAltName=" + ",".join(_san(host) for host in hosts))
    extensions.write_text("\n".join(lines) + "\n")
    leaf = folder / f"{common_name}.leaf.pem"
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-days", str(DAYS), "-sha256", "-extfile", str(extensions), "-out", str(leaf))
    cert.write_text(leaf.read_text() + ca.cert.read_text())
    for scratch in (csr, extensions, leaf):
        scratch.unlink()
    if key_password is not None:  # re-written as an encrypted PKCS#8 key; the password goes through a pipe
        encrypted = stem.with_suffix(".key.enc")
        _openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", str(key), "-out", str(encrypted),
                 "-passout", "stdin", secret=key_password)
        encrypted.replace(key)
        os.chmod(key, 0o600)
    return IssuedCertificate(cert, key, common_name)


def pkcs12_keystore(issued: IssuedCertificate, path: Path, password: str) -> Path:
    """The JVM's keystore for a broker: its key and certificate chain, protected by `password`."""
    _openssl("pkcs12", "-export", "-in", str(issued.cert), "-inkey", str(issued.key), "-name", issued.common_name,
             "-out", str(path), "-passout", "stdin", secret=password)
    os.chmod(path, 0o600)
    return path


def _san(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return f"IP:{host}"
    except ValueError:
        return f"DNS:{host}"


def _openssl(*args: str, secret: str | None = None) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise TlsError("`openssl` was not found on PATH: it makes the local broker's throwaway certificates "
                       "(install it, e.g. `apt-get install openssl`)")
    done = subprocess.run([openssl, *args], input=None if secret is None else secret + "\n", check=False,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise TlsError(f"openssl {args[0]} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")

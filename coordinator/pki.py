"""The coordinator's private CA and the SuperLink's TLS server certificate.

The SuperLink binds to loopback only; its own SuperExec connects to
``https://127.0.0.1:<port>``, so the server certificate always carries the
SANs localhost, 127.0.0.1 and ::1, plus the public host when one is given
(members reach it through the fleet-only nginx proxy, which reuses this cert).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocols.atomic_files import PRIVATE, PUBLIC, write_bytes
from protocols.errors import DeploymentError

__all__ = ["TlsFiles", "create_pki", "private_dir", "san_names"]

_LOOPBACK_SANS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """Paths of the CA certificate and the server certificate/key."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700: only its owner may list or enter it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def san_names(public_host: str | None) -> list[str]:
    """Loopback names plus the public host (deduplicated, order kept)."""
    names = list(_LOOPBACK_SANS)
    if public_host and public_host not in names:
        names.append(public_host)
    return names


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_pki(directory: Path, *, public_host: str | None = None,
               validity_days: int = 825, overwrite: bool = False) -> TlsFiles:
    """Create ``ca.crt``/``ca.key`` and ``server.crt``/``server.key`` in ``directory``."""
    private_dir(directory)
    files = TlsFiles(ca_cert=directory / "ca.crt", ca_key=directory / "ca.key",
                     server_cert=directory / "server.crt", server_key=directory / "server.key")
    existing = [p for p in (files.ca_cert, files.ca_key, files.server_cert, files.server_key)
                if p.exists()]
    if existing and not overwrite:
        raise DeploymentError("TLS material already exists; refusing to overwrite it",
                              got=[str(p) for p in existing],
                              fix="use a fresh directory, or pass overwrite=True deliberately")
    now = _dt.datetime.now(_dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedadmet federation CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    names = san_names(public_host)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[-1])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=validity_days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    write_bytes(files.ca_key, _key_pem(ca_key), mode=PRIVATE)
    write_bytes(files.server_key, _key_pem(server_key), mode=PRIVATE)
    write_bytes(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=PUBLIC)
    write_bytes(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM),
                mode=PUBLIC)
    return files

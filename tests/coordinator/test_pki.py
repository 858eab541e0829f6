import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from coordinator.pki import create_pki
from protocols.errors import DeploymentError


def test_server_cert_has_loopback_and_public_sans_and_chains_to_ca(tmp_path: Path) -> None:
    files = create_pki(tmp_path, public_host="fl.example.org")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "fl.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    cert.verify_directly_issued_by(ca)
    assert files.server_key.stat().st_mode & 0o077 == 0


def test_existing_tls_material_is_not_overwritten(tmp_path: Path) -> None:
    files = create_pki(tmp_path)
    before = files.ca_cert.read_bytes()
    with pytest.raises(DeploymentError):
        create_pki(tmp_path)
    assert files.ca_cert.read_bytes() == before

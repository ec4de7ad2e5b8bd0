"""A throwaway certificate authority, a server certificate for 127.0.0.1 and client
certificates, for TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certs(directory: Path) -> Path:
    """Write ``ca.pem`` (the authority) and its key ``ca-key.pem``, ``server-cert.pem`` and
    ``server-key.pem`` (valid for 127.0.0.1 and localhost) into ``directory``, the layout
    ``DOCKER_CERT_PATH`` reads ``ca.pem`` from; return ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("powerstrip test CA")).issuer_name(_name("powerstrip test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "ca-key.pem").write_bytes(ca_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "server-cert.pem").write_bytes(cert.public_bytes(pem))
    (directory / "server-key.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory


def ssl_listen(directory: Path, port: int = 0) -> str:
    """The ``--listen`` description of a TLS listener on 127.0.0.1 with the certificate in
    ``directory``."""
    return (f"ssl:{port}:interface=127.0.0.1:privateKey={directory / 'server-key.pem'}"
            f":certKey={directory / 'server-cert.pem'}")


def make_client(directory: Path, authority: Path, common_name: str = "client",
                *, expired: bool = False, sans: tuple[str, ...] = ()) -> Path:
    """Write a client certificate for ``common_name`` (with the DNS names ``sans`` as subject
    alternative names) signed by the authority ``make_certs``
    wrote into ``authority`` (expired an hour ago with ``expired``) as ``cert.pem`` and
    ``key.pem``, with that authority's ``ca.pem`` beside them: the ``DOCKER_CERT_PATH``
    layout of ``docker --tlsverify``. Returns ``directory``."""
    pem = serialization.Encoding.PEM
    ca = x509.load_pem_x509_certificate((authority / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((authority / "ca-key.pem").read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    lifetime = (now - datetime.timedelta(days=2), now - datetime.timedelta(hours=1)) \
        if expired else (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(lifetime[0]).not_valid_after(lifetime[1])
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
    )
    if sans:
        cert = cert.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in sans]), critical=False)
    cert = cert.sign(ca_key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(authority / "ca.pem", directory / "ca.pem")
    (directory / "cert.pem").write_bytes(cert.public_bytes(pem))
    (directory / "key.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory

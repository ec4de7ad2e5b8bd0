"""A client certificate as ``core.identity.Certificate`` records it, from its X.509 form: shared
by the TLS listener (``proxy.peer``) and the AuthZ plugin bridge (``plugins.wire``), which reads
the PEM dockerd sends."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any

from powerstrip.core.identity import Certificate


def certificate_of(cert: Any) -> Certificate:
    """The record of a ``cryptography`` X.509 certificate: subject (RFC 4514), common name,
    subject alternative names as text, and the SHA-256 of its DER form."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else None
    sans: list[str] = []
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    else:
        sans = [_san_text(general) for general in extension.value]
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    return Certificate(cert.subject.rfc4514_string(), common_name, tuple(sans), digest)


def _san_text(general: Any) -> str:
    """A subject alternative name as text: DNS names, e-mail addresses and URIs as they are, IP
    addresses written out, a directory name in RFC 4514, a registered ID or another name by its
    object identifier (and, for another name, its DER value in hex)."""
    from cryptography import x509

    value = general.value
    if isinstance(value, (str, ipaddress.IPv4Address, ipaddress.IPv6Address,
                          ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if isinstance(general, x509.DirectoryName):
        return value.rfc4514_string()
    if isinstance(general, x509.RegisteredID):
        return value.dotted_string
    if isinstance(general, x509.OtherName):
        return f"{general.type_id.dotted_string}:{value.hex()}"
    return str(value)


def certificate_from_pem(pem: str) -> Certificate | None:
    """The record of a PEM certificate, or None if it is not one."""
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, ImportError, UnicodeEncodeError):
        return None
    return certificate_of(cert)

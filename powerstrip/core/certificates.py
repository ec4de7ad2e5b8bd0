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
        for general in extension.value:
            value = general.value
            sans.append(str(value) if isinstance(value, (str, ipaddress.IPv4Address,
                                                         ipaddress.IPv6Address)) else repr(value))
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    return Certificate(cert.subject.rfc4514_string(), common_name, tuple(sans), digest)


def certificate_from_pem(pem: str) -> Certificate | None:
    """The record of a PEM certificate, or None if it is not one."""
    try:
        from cryptography import x509

        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, ImportError, UnicodeEncodeError):
        return None
    return certificate_of(cert)

"""Who a client connection is: the record the proxy's messages, its allowlist and adapters use.

How a connection is read into a ``Client`` (the kernel's ``SO_PEERCRED`` on a unix socket, the
peer's address on TCP, the verified certificate on TLS) lives with the transports, in
``powerstrip.proxy.peer``; this is the plain record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Transport = Literal["unix", "tcp", "tls"]


@dataclass(frozen=True)
class Certificate:
    """A client certificate the TLS handshake verified against the CA.

    ``subject`` is its subject as RFC 4514 writes it (``CN=alice,O=dev``), ``common_name`` its
    subject's CN (None without one), ``sans`` its subject alternative names (DNS names, IP
    addresses, e-mail addresses and URIs, as text) and ``sha256`` the hex digest of its DER form.
    """

    subject: str
    common_name: str | None
    sans: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class Client:
    """The sender of a connection's requests, as far as the transport can tell.

    For ``unix``, ``address`` is the listener's socket path and ``uid``/``gid``/``pid`` come from
    the kernel, ``user`` and ``groups`` from the names they resolve to (None and () when they do
    not). For ``tcp`` and ``tls``, ``address`` is the peer's ``host:port``; ``certificate`` is the
    client certificate of a ``tls`` connection that presented a verified one, else None.
    """

    transport: Transport
    address: str
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    user: str | None = None
    groups: tuple[str, ...] = ()
    certificate: Certificate | None = None

    def describe(self) -> str:
        """How messages name the client: ``unix user alice (uid 1001)``, ``tls client
        CN=alice (127.0.0.1:53422)``, ``tcp client 127.0.0.1:53422``."""
        if self.transport == "unix":
            if self.uid is None:
                return f"unix client of {self.address} (credentials unknown)"
            if self.user is None:
                return f"unix uid {self.uid}"
            return f"unix user {self.user} (uid {self.uid})"
        if self.certificate is not None:
            return f"{self.transport} client {self.certificate.subject} ({self.address})"
        if self.transport == "tls":
            return f"tls client {self.address} (no client certificate)"
        return f"tcp client {self.address}"


#: The client of a connection whose transport could not be read (a test's fake transport).
UNKNOWN = Client("tcp", "unknown")

"""Reading who a client is from its connection (``powerstrip.core.identity.Client``).

A unix socket's peer is known from the kernel (``SO_PEERCRED``: one system call), a TCP peer
by its address, a TLS peer by the certificate the handshake verified. The handshake may not be
over when the connection is made, so a connection reads its client when its first request
arrives, and once.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import struct

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import ISSLTransport

from powerstrip.core.certificates import certificate_of
from powerstrip.core.identity import Certificate, Client

log = logging.getLogger(__name__)

_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def client_of(transport: object, listener_address: str | None = None) -> Client:
    """The client at the other end of ``transport``; ``listener_address`` names a unix
    listener (by default, the path the transport says it is bound to)."""
    host = _call(transport, "getHost")
    if isinstance(host, UNIXAddress):
        address = listener_address or _text(host.name) or "unix socket"
        return _unix_client(transport, address)
    peer = _call(transport, "getPeer")
    address = _host_port(peer)
    if ISSLTransport.providedBy(transport):
        return Client("tls", address, certificate=_certificate(transport))
    return Client("tcp", address)


def _unix_client(transport: object, address: str) -> Client:
    handle = _call(transport, "getHandle")
    try:
        raw = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    except (AttributeError, OSError) as exc:
        log.debug("no peer credentials on %s: %s", address, exc)
        return Client("unix", address)
    pid, uid, gid = _CREDENTIALS.unpack(raw)
    user = _user(uid)
    return Client("unix", address, uid=uid, gid=gid, pid=pid or None, user=user,
                  groups=_groups(user, gid))


def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _groups(user: str | None, gid: int) -> tuple[str, ...]:
    """The names of the primary group ``gid`` and, for a known user, the supplementary ones
    the group database gives it (those the process holds are not visible over the socket)."""
    ids = [gid]
    if user is not None:
        try:
            ids.extend(i for i in os.getgrouplist(user, gid) if i not in ids)
        except OSError:
            pass
    names = []
    for group_id in ids:
        try:
            names.append(grp.getgrgid(group_id).gr_name)
        except KeyError:
            continue
    return tuple(names)


def _certificate(transport: object) -> Certificate | None:
    try:
        peer = transport.getPeerCertificate()
    except Exception as exc:  # noqa: BLE001 - a handshake not done, or any TLS error
        log.debug("no peer certificate: %s", exc)
        return None
    if peer is None:
        return None
    return certificate_of(peer.to_cryptography())


def _host_port(peer: object) -> str:
    if isinstance(peer, IPv6Address):
        return f"[{peer.host}]:{peer.port}"
    if isinstance(peer, IPv4Address):
        return f"{peer.host}:{peer.port}"
    return "unknown"


def _call(transport: object, name: str) -> object:
    method = getattr(transport, name, None)
    try:
        return method() if method is not None else None
    except Exception:  # noqa: BLE001 - a transport that cannot say: the client is unknown
        return None


def _text(name: bytes | str | None) -> str | None:
    if isinstance(name, bytes):
        return os.fsdecode(name)
    return name

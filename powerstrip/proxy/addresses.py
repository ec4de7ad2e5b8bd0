"""Listener and upstream addresses: the docker CLI's spellings, turned into Twisted endpoints."""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass

from twisted.internet import defer, error, unix
from twisted.internet.address import UNIXAddress
from twisted.internet.protocol import Factory

_BARE_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]*):(\d+)$")
_TWISTED_TYPES = ("tcp:", "tcp6:", "unix:", "ssl:", "systemd:")


class AddressError(ValueError):
    """An address that is neither a docker-style URL nor a Twisted endpoint description."""


@dataclass(frozen=True)
class Address:
    """A parsed address.

    ``kind`` is "tcp", "unix" or "endpoint" (a Twisted endpoint description passed as is);
    ``docker_host`` is how a docker client names it (for the printed ``export DOCKER_HOST``).
    """

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""
    description: str = ""

    @property
    def docker_host(self) -> str:
        """The ``DOCKER_HOST`` value that reaches this address."""
        if self.kind == "unix":
            return f"unix://{self.path}"
        if self.kind == "tcp":
            host = self.host or "127.0.0.1"
            if ":" in host:
                host = f"[{host}]"
            return f"tcp://{host}:{self.port}"
        return self.description

    def __str__(self) -> str:
        return self.docker_host


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def parse_address(text: str) -> Address:
    """Parse ``tcp://HOST:PORT``, ``unix:///path``, a bare ``HOST:PORT`` or a Twisted endpoint."""
    text = text.strip()
    if text.startswith("unix://"):
        path = text[len("unix://"):]
        if not path.startswith("/"):
            raise AddressError(f"unix address needs an absolute path: {text!r}")
        return Address("unix", path=path)
    if text.startswith(("tcp://", "http://")):
        rest = text.split("://", 1)[1].rstrip("/")
        match = _BARE_HOST_PORT.match(rest)
        if not match:
            raise AddressError(f"expected tcp://HOST:PORT, got {text!r}")
        return Address("tcp", host=match.group(1).strip("[]"), port=int(match.group(2)))
    if text.startswith(_TWISTED_TYPES):
        return Address("endpoint", description=text)
    match = _BARE_HOST_PORT.match(text)
    if match:
        return Address("tcp", host=match.group(1).strip("[]"), port=int(match.group(2)))
    raise AddressError(
        f"cannot read address {text!r}: use tcp://HOST:PORT, unix:///path, HOST:PORT "
        "or a Twisted endpoint description (tcp:, unix:, ssl:, systemd:)"
    )


#: Connections a burst opens before the proxy accepts them wait in the listen queue. Twisted's
#: default of 50 left the rest to SYN retransmits, seconds later (300 ``events`` streams took
#: 4-5 s against 40 ms direct); the kernel caps this at ``net.core.somaxconn``.
LISTEN_BACKLOG = 4096


def server_description(address: Address, mode: int = 0o660) -> str:
    """The Twisted server endpoint description that listens on ``address``."""
    if address.kind == "tcp":
        interface = address.host or "127.0.0.1"
        return (f"tcp:port={address.port}:interface={_escape(interface)}"
                f":backlog={LISTEN_BACKLOG}")
    if address.kind == "unix":
        return f"unix:address={_escape(address.path)}:mode={mode:o}:backlog={LISTEN_BACKLOG}"
    description = address.description
    if description.split(":", 1)[0] in ("tcp", "ssl", "unix", "tcp6") and (
            "backlog=" not in description):
        description += f":backlog={LISTEN_BACKLOG}"
    return description


def client_description(address: Address, timeout: int = 10) -> str:
    """The Twisted client endpoint description that connects to ``address``."""
    if address.kind == "tcp":
        host = address.host or "127.0.0.1"
        return f"tcp:host={_escape(host)}:port={address.port}:timeout={timeout}"
    if address.kind == "unix":
        return f"unix:path={_escape(address.path)}:timeout={timeout}"
    return address.description


class ImmediateUNIXEndpoint:
    """A client endpoint for the daemon's unix socket that connects in the calling turn.

    Twisted's UNIX connector makes a Connector and a Client, arms a timeout and waits for the
    socket to turn writable, although a unix connect to a listening socket is done at once (or
    refused at once). That machinery was the largest share of the proxy's CPU per connection in
    a burst of 300 ``events`` streams (0.68 of 1.3 s over 2,400 connections). Here the socket is
    connected without blocking and wrapped in the transport Twisted's ``adoptStreamConnection``
    makes for a connected unix socket (``twisted.internet.unix.Server``), built from the socket
    itself: ``adoptStreamConnection`` takes a descriptor, so it duplicates it, and asks the kernel
    for both ends' names four times for strings nothing here reads, seven system calls of the
    about 36 a proxied connection costs.

    A unix connect does not wait when the daemon's listen queue is full: it fails with EAGAIN,
    and Twisted's connector reported that as a failed connection (a 502) where a client connecting
    directly would simply have waited. This one tries again, more slowly each time, for up to
    ``timeout`` seconds.
    """

    def __init__(self, reactor: object, path: str, timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.path = path
        self.timeout = timeout

    def connect(self, factory: Factory) -> defer.Deferred:
        """Connect; a Deferred firing with the protocol ``factory`` built."""
        result = self._attempt(factory)
        if result is not None:
            return result
        waiting: defer.Deferred = defer.Deferred()
        deadline = self.reactor.seconds() + self.timeout

        def retry(delay: float) -> None:
            if waiting.called:
                return  # cancelled
            outcome = self._attempt(factory)
            if outcome is not None:
                outcome.chainDeferred(waiting)
            elif self.reactor.seconds() >= deadline:
                waiting.errback(error.ConnectError(
                    string=f"the listen queue of {self.path} stayed full for "
                           f"{self.timeout:g} s"))
            else:
                self.reactor.callLater(delay, retry, min(delay * 2, 0.1))

        self.reactor.callLater(0.001, retry, 0.002)
        return waiting

    def _attempt(self, factory: Factory) -> defer.Deferred | None:
        """One non-blocking connect: its outcome, or None when the listen queue is full."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS):
                return None
            return defer.fail(error.ConnectError(string=f"{exc.strerror}: {self.path}"))
        protocol = factory.buildProtocol(UNIXAddress(self.path))
        if protocol is None:
            sock.close()
            return defer.fail(error.ConnectError(string=f"no protocol for {self.path}"))
        # What unix.Server._fromConnectedSocket does after its dup, with the peer's name known:
        # the daemon's socket path.
        transport = unix.Server(sock, protocol, self.path, None, 0, self.reactor)
        transport.repstr = f"<{type(protocol).__name__} to {self.path}>"
        protocol.makeConnection(transport)
        return defer.succeed(protocol)


def upstream_endpoint(reactor: object, address: Address) -> object:
    """The client endpoint for the daemon at ``address``: ``ImmediateUNIXEndpoint`` for a unix
    socket on a reactor that can adopt connected sockets, else Twisted's from
    ``client_description``."""
    from twisted.internet.endpoints import clientFromString
    from twisted.internet.posixbase import PosixReactorBase

    # A reactor on real sockets (not a test's memory reactor, which only records adoptions).
    if address.kind == "unix" and isinstance(reactor, PosixReactorBase):
        return ImmediateUNIXEndpoint(reactor, address.path)
    return clientFromString(reactor, client_description(address))

"""Listener and upstream addresses: the docker CLI's spellings, turned into Twisted endpoints."""

from __future__ import annotations

import re
from dataclasses import dataclass

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

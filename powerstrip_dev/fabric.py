"""Hosts that share only a network, on one machine: named network namespaces on a bridge.

``Fabric`` makes a bridge in a namespace of its own and, per host, a namespace joined to it by a
veth pair, with an address the fabric assigns on its subnet. Nothing else joins them: a host's
processes reach another host's only at that address, over the bridge, as machines on one LAN
would. The machine running the fabric is on it too, as the operator's workstation (the last
address of the subnet), so that it can watch what it started; the hosts do not need it.

Everything is named with the fabric's short random tag, so several fabrics (a demo and a test)
can exist at once, and ``close`` removes what it made whatever state it is in.

``ip`` (iproute2) does the work: it is the tool an operator would use, and there is no library
call for network namespaces that is simpler than it.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Fabric", "FabricError", "FabricHost", "nsenter"]

NETNS_DIR = Path("/run/netns")


class FabricError(RuntimeError):
    """A namespace, link or address could not be made; the message has ``ip``'s words."""


def _ip(*args: str) -> None:
    binary = shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "ip"
    result = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise FabricError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")


def _free_subnet() -> str:
    """A 10.77.X.0/24 that no address of this machine is on: another fabric's operator link
    (a demo beside a test) would otherwise route the same subnet twice."""
    listed = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                            timeout=30).stdout
    while True:
        candidate = f"10.77.{secrets.randbelow(200) + 20}."
        if f" {candidate}" not in listed:
            return candidate + "0/24"


def nsenter(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run in network namespace ``netns`` (and only that: the file system stays the
    machine's)."""
    binary = shutil.which("nsenter", path="/usr/bin:/bin:/usr/sbin:/sbin") or "nsenter"
    return [binary, f"--net={NETNS_DIR / netns}", *argv]


@dataclass(frozen=True)
class FabricHost:
    """One host on the fabric: its namespace and its address."""

    name: str
    netns: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as run on this host."""
        return nsenter(self.netns, argv)


class Fabric:
    """A bridge and the hosts on it; see the module docstring."""

    def __init__(self, subnet: str | None = None, tag: str | None = None) -> None:
        """``subnet``: an IPv4 /24 (default: 10.77.X.0/24 with a random X); ``tag``: the
        short name every namespace and link of this fabric starts with."""
        self.tag = tag or "ps" + secrets.token_hex(2)
        if subnet is None:
            subnet = _free_subnet()
        self.subnet = ipaddress.IPv4Network(subnet)
        self.hosts: dict[str, FabricHost] = {}
        self._bridge_ns = f"{self.tag}-lan"
        self._made: list[str] = []  # namespaces, in the order made
        self._operator_link: str | None = None
        self._open = False

    def __enter__(self) -> Fabric:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def prefixlen(self) -> int:
        """The subnet's prefix length, for ``ADDRESS/PREFIX`` notation."""
        return self.subnet.prefixlen

    def open(self) -> None:
        """Make the bridge, and the operator's link to it."""
        if self._open:
            return
        self._open = True
        self._netns(self._bridge_ns)
        _ip("-n", self._bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self._bridge_ns, "link", "set", "br0", "up")
        # The operator's end stays in this machine's namespace.
        outer, inner = f"{self.tag}-op", f"{self.tag}-opb"
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        self._operator_link = outer
        _ip("link", "set", inner, "netns", self._bridge_ns)
        _ip("-n", self._bridge_ns, "link", "set", inner, "master", "br0", "up")
        _ip("addr", "add", f"{self.operator_address}/{self.prefixlen}", "dev", outer)
        _ip("link", "set", outer, "up")

    @property
    def operator_address(self) -> str:
        """This machine's address on the fabric."""
        return str(self.subnet.broadcast_address - 1)

    def add_host(self, name: str) -> FabricHost:
        """A new host ``name`` (a short lower-case word): its namespace, a veth pair to the
        bridge, the next free address, loopback up."""
        self.open()
        if name in self.hosts:
            raise FabricError(f"host {name} is already on the fabric")
        address = str(self.subnet.network_address + len(self.hosts) + 1)
        netns = f"{self.tag}-{name}"
        self._netns(netns)
        # Interface names are at most 15 bytes: the tag is 6.
        outer, inner = f"{self.tag}-{name[:3]}h", f"{self.tag}-{name[:3]}b"
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "netns", netns)
        _ip("link", "set", inner, "netns", self._bridge_ns)
        _ip("-n", self._bridge_ns, "link", "set", inner, "master", "br0", "up")
        _ip("-n", netns, "link", "set", outer, "name", "eth0")
        _ip("-n", netns, "addr", "add", f"{address}/{self.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        host = FabricHost(name, netns, address)
        self.hosts[name] = host
        return host

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)

    def close(self) -> None:
        """Remove every namespace and link of the fabric (their veth pairs go with them)."""
        if self._operator_link is not None:
            try:
                _ip("link", "del", self._operator_link)
            except FabricError:
                pass
            self._operator_link = None
        for netns in reversed(self._made):
            try:
                _ip("netns", "del", netns)
            except FabricError:
                pass
        self._made.clear()
        self.hosts.clear()
        self._open = False

#!/usr/bin/env python3
"""The network adapter: containers ask for an IP address with ``WEAVE_CIDR``, as with Weave.

A container created with ``WEAVE_CIDR=10.2.1.5/24`` in its environment is attached to the
user-defined bridge network for that subnet, ``weave-10.2.1.0-24`` (created through the Docker
Engine API when missing), with the address 10.2.1.5. Containers given addresses in the same
subnet share that network and reach each other by IP. Run it next to Powerstrip::

    python adapters/network.py --listen 127.0.0.1:9100 --docker unix:///var/run/docker.sock

and hook it into container create (pre and post) and start (post)::

    endpoints:
      "POST /*/containers/create":
        pre: [network]
        post: [network]
      "POST /*/containers/*/start":
        post: [network]
    adapters:
      network: http://127.0.0.1:9100/

``--docker`` is the engine the adapter talks to itself, directly and never through Powerstrip, or
its own calls would run the hooks again.

- The create pre-hook checks the address and refuses conflicts: 400 for a malformed
  ``WEAVE_CIDR``; 409 for the network or broadcast address, the gateway, an address another
  container already holds on the network (running or not: the daemon itself only notices at
  start), a subnet overlapping another network, and a request that also asks for another network
  mode or network. Otherwise it creates the network if needed and rewrites the body:
  ``HostConfig.NetworkMode`` and ``NetworkingConfig.EndpointsConfig[net].IPAMConfig``.
- Creates are checked one at a time (a ``DeferredLock``) and an address that passed is reserved
  until the create post-hook reports the daemon's answer (or, without that hook, for
  ``RESERVATION_TTL`` seconds), so two concurrent creates cannot both take it.
- The start post-hook inspects the container and logs ``container <id12> has 10.2.1.5 on
  weave-10.2.1.0-24``. A container that did not get the address it asked for is logged as an
  error and the start is answered 500 with the reason, so ``docker run`` and ``docker start`` fail
  loudly; the container is left running, for its owner to inspect or remove.

Requests without ``WEAVE_CIDR`` pass unchanged.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from twisted.internet import defer

from powerstrip.adapter import Adapter, Refuse, Request, Response
from powerstrip.kit.engine_api import EngineClient, EngineError
from powerstrip.kit.etcd import StoreUnavailable
from powerstrip.kit.gojson import go_fold_equal, go_keys, go_value
from powerstrip.proxy.addresses import AddressError, parse_address

__all__ = [
    "BadCidr",
    "Conflict",
    "EtcdReservations",
    "SqliteReservations",
    "open_reservations",
    "IpamDriver",
    "NetworkAdapter",
    "argument_parser",
    "check_address",
    "confirm",
    "find_network",
    "first_host",
    "holder_of",
    "main",
    "network_gateway",
    "network_name",
    "overlay_name",
    "parse_cidr",
    "Reservations",
    "requested_interface",
    "rewrite_create",
    "subnet_of_name",
    "weave_cidr",
]

log = logging.getLogger("powerstrip.network")

#: The environment variable a container names its address in.
ENV_NAME = "WEAVE_CIDR"
#: Networks made by the adapter are named ``weave-<network address>-<prefix length>``.
NETWORK_PREFIX = "weave-"
#: The label put on networks the adapter creates, so they can be told from others.
LABEL = "org.powerstrip.adapter"
#: How long an address that passed the checks stays reserved for its create when no create
#: post-hook reports the daemon's answer. Creates take well under a second; a failed one (an image
#: still to pull) must not keep the address from its own retry for long.
RESERVATION_TTL = 10.0
#: Seconds the adapter waits for each call to the engine; the proxy's hook timeout (10 s by
#: default) is the client's bound, this one keeps the create lock from being held longer.
ENGINE_TIMEOUT = 10.0

# ASCII digits only: \d would let other scripts' digits through.
_CIDR = re.compile(r"([0-9]{1,3}(?:\.[0-9]{1,3}){3})/(0|[1-9][0-9]?)")
_NAME = re.compile(re.escape(NETWORK_PREFIX) + r"([0-9]{1,3}(?:\.[0-9]{1,3}){3})-([1-9][0-9]?)")
# Network modes that mean "no network chosen": the docker CLI sends "default" when --network
# is not given.
_UNCHOSEN = ("", "default")


class BadCidr(ValueError):
    """A ``WEAVE_CIDR`` that cannot be read as an address; refused with 400."""


class Conflict(ValueError):
    """An address or network request that cannot be granted; refused with 409."""


# -- reading the create body --------------------------------------------------------------------
#
# The daemon decodes the body with Go's encoding/json, which matches object keys to fields
# case-insensitively ("env" is Env), lets the last of repeated keys win, and merges repeated
# objects into one struct. The helpers below read the body as the daemon will, so that a client
# spelling a key differently neither escapes the adapter nor keeps a value the rewrite replaced.


def _object(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The object field ``name`` as the daemon decodes it: every spelling merged in order (a
    null resets it); ``{}`` when absent or not an object."""
    merged: dict[str, Any] = {}
    for key in go_keys(obj, name):
        value = obj[key]
        if isinstance(value, dict):
            merged.update(value)
        else:
            merged = {}
    return merged


def _put(obj: Mapping[str, Any], name: str, value: Any) -> dict[str, Any]:
    """A copy of ``obj`` with field ``name`` set to ``value`` under its canonical spelling and
    every other spelling removed."""
    copy = {k: v for k, v in obj.items() if not (isinstance(k, str) and go_fold_equal(k, name))}
    copy[name] = value
    return copy


# -- pure parts ---------------------------------------------------------------------------------


def parse_cidr(text: str) -> ipaddress.IPv4Interface:
    """``text`` (``10.2.1.5/24``) as an address within its subnet; ``BadCidr`` if it is not an
    IPv4 address with a prefix length, or the subnet has no room for a gateway and a container
    (a prefix outside /1 to /30)."""
    match = _CIDR.fullmatch(text)
    if match is None:
        raise BadCidr(
            f"{ENV_NAME}={text!r} is not an IPv4 address with a prefix length, "
            f"such as {ENV_NAME}=10.2.1.5/24"
        )
    try:
        address = ipaddress.IPv4Address(match.group(1))
    except ValueError as exc:
        raise BadCidr(f"{ENV_NAME}={text!r}: {exc}") from None
    prefix = int(match.group(2))
    if not 1 <= prefix <= 30:
        raise BadCidr(
            f"{ENV_NAME}={text!r}: a /{prefix} subnet has no room for a gateway and a container; "
            f"use a prefix length from /1 to /30"
        )
    return ipaddress.IPv4Interface(f"{address}/{prefix}")


def weave_cidr(env: Any) -> str | None:
    """The ``WEAVE_CIDR`` value in a container's ``Env`` list, or None if it has none.

    ``BadCidr`` when it is named without a value, or given twice with different values (which
    one the container's processes would see depends on how they read their environment).
    """
    if not isinstance(env, list):
        return None
    values: list[str] = []
    for entry in env:
        if not isinstance(entry, str):
            continue
        name, equals, value = entry.partition("=")
        if name != ENV_NAME:
            continue
        if not equals:
            raise BadCidr(f"{ENV_NAME} is named without a value; give one, such as "
                          f"{ENV_NAME}=10.2.1.5/24")
        values.append(value)
    if not values:
        return None
    if len(set(values)) > 1:
        shown = ", ".join(repr(v) for v in dict.fromkeys(values))
        raise BadCidr(f"{ENV_NAME} is given more than once with different values: {shown}")
    return values[0]


def requested_interface(body: Mapping[str, Any]) -> ipaddress.IPv4Interface | None:
    """The address a create body asks for through ``WEAVE_CIDR``, or None when it asks none."""
    value = weave_cidr(go_value(body, "Env"))
    return None if value is None else parse_cidr(value)


def network_name(subnet: ipaddress.IPv4Network) -> str:
    """The name of the network the adapter makes for ``subnet``: ``weave-10.2.1.0-24``."""
    return f"{NETWORK_PREFIX}{subnet.network_address}-{subnet.prefixlen}"


def overlay_name(subnet: ipaddress.IPv4Network) -> str:
    """The name of the overlay network the adapter makes for ``subnet`` on a swarm:
    ``weave-10-2-1-0-24`` (Swarm takes only names that are DNS labels, so no dots)."""
    return f"{NETWORK_PREFIX}{str(subnet.network_address).replace('.', '-')}-{subnet.prefixlen}"


def subnet_of_name(name: str) -> ipaddress.IPv4Network | None:
    """The subnet a ``network_name`` stands for, or None if ``name`` is not one."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    try:
        subnet = ipaddress.IPv4Network(f"{match.group(1)}/{match.group(2)}")
    except ValueError:
        return None
    return subnet if network_name(subnet) == name else None


def first_host(subnet: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The gateway the adapter gives a network it creates: the subnet's first host address, as
    the daemon would pick."""
    return subnet.network_address + 1


def check_address(
    interface: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address | None = None
) -> None:
    """``Conflict`` if ``interface``'s address is one no container may hold on its network: the
    network address, the broadcast address, or ``gateway``."""
    subnet, address = interface.network, interface.ip
    name = network_name(subnet)
    if address == subnet.network_address:
        raise Conflict(f"{address} is the network address of {subnet}, not an address a "
                       f"container can hold on network {name}")
    if address == subnet.broadcast_address:
        raise Conflict(f"{address} is the broadcast address of {subnet}, not an address a "
                       f"container can hold on network {name}")
    if gateway is not None and address == gateway:
        raise Conflict(f"{address} is the gateway of network {name}, held by the network itself")


def rewrite_create(body: Mapping[str, Any], interface: ipaddress.IPv4Interface,
                   name: str | None = None) -> dict[str, Any]:
    """The create body attached to ``interface``'s network with its address: NetworkMode set to
    the network and the network's endpoint given the address; every other field kept.

    The client's own settings for that endpoint (aliases, ...) are kept, including those it gave
    the default network. ``Conflict`` when the body also asks for another network mode, another
    network, or another address on this one: the adapter refuses rather than override a choice
    the client made explicitly.
    """
    name = name or network_name(interface.network)
    address = str(interface.ip)
    host_config = _object(body, "HostConfig")
    mode = go_value(host_config, "NetworkMode")
    mode = "" if mode is None else str(mode)
    if mode not in (*_UNCHOSEN, name):
        raise Conflict(
            f"{ENV_NAME}={interface} attaches the container to network {name} as {address}, "
            f"but the request also asks for network mode {mode!r}; give one or the other"
        )
    networking = _object(body, "NetworkingConfig")
    endpoints = _object(networking, "EndpointsConfig")
    others = [key for key in endpoints if key not in ("default", name)]
    if others:
        raise Conflict(
            f"{ENV_NAME}={interface} attaches the container to network {name} as {address}, "
            f"but the request also asks to join {', '.join(repr(k) for k in others)}"
        )
    settings = endpoints.get(name)
    if not isinstance(settings, dict):
        settings = endpoints.get("default")
    settings = settings if isinstance(settings, dict) else {}
    ipam = _object(settings, "IPAMConfig")
    asked = go_value(ipam, "IPv4Address")
    if asked not in (None, "", address):
        raise Conflict(
            f"{ENV_NAME}={interface} asks for {address} on network {name}, but the request "
            f"also asks for {asked}"
        )
    settings = _put(settings, "IPAMConfig", _put(ipam, "IPv4Address", address))
    rewritten = _put(body, "HostConfig", _put(host_config, "NetworkMode", name))
    return _put(rewritten, "NetworkingConfig",
                _put(networking, "EndpointsConfig", {name: settings}))


def _subnets(network: Mapping[str, Any]) -> list[ipaddress.IPv4Network]:
    """The IPv4 subnets of a network as the engine describes it (``GET /networks``)."""
    ipam = network.get("IPAM") or {}
    found = []
    for entry in ipam.get("Config") or []:
        try:
            subnet = ipaddress.ip_network((entry or {}).get("Subnet") or "", strict=False)
        except ValueError:
            continue
        if isinstance(subnet, ipaddress.IPv4Network):
            found.append(subnet)
    return found


def find_network(
    networks: list[Mapping[str, Any]], subnet: ipaddress.IPv4Network,
    ipam_driver: str | None = None, name: str | None = None,
) -> Mapping[str, Any] | None:
    """The adapter's network for ``subnet`` among the engine's ``networks``, or None if it must
    be made. ``Conflict`` when another network's subnet overlaps ``subnet`` (the daemon would
    refuse to create it), or a network already has the name with another subnet.

    With ``ipam_driver`` (the adapter served as that IPAM driver), a network of any name whose
    addresses that driver gives on exactly ``subnet`` is the adapter's too: ``docker network
    create --ipam-driver powerstrip-ipam --subnet 10.2.1.0/24 weave`` makes the network that
    ``WEAVE_CIDR=10.2.1.5/24`` joins.

    ``name``: the network's name, when not ``network_name(subnet)`` (``overlay_name`` on a
    swarm)."""
    if ipam_driver is not None:
        for network in networks:
            driver = (network.get("IPAM") or {}).get("Driver")
            if driver == ipam_driver and _subnets(network) == [subnet]:
                return network
    name = name or network_name(subnet)
    mine = None
    for network in networks:
        theirs = _subnets(network)
        if network.get("Name") == name:
            if theirs and subnet not in theirs:
                raise Conflict(
                    f"network {name} exists with subnet "
                    f"{', '.join(map(str, theirs))}, not {subnet}"
                )
            mine = network
            continue
        for other in theirs:
            if other.overlaps(subnet):
                raise Conflict(
                    f"subnet {subnet} (network {name}) overlaps network "
                    f"{network.get('Name')} with subnet {other}"
                )
    return mine


def network_gateway(network: Mapping[str, Any], subnet: ipaddress.IPv4Network
                    ) -> ipaddress.IPv4Address:
    """The gateway of an existing network on ``subnet``; the first host if it names none."""
    for entry in (network.get("IPAM") or {}).get("Config") or []:
        try:
            gateway = ipaddress.IPv4Address((entry or {}).get("Gateway") or "")
        except ValueError:
            continue
        if gateway in subnet:
            return gateway
    return first_host(subnet)


def _container_name(container: Mapping[str, Any]) -> str:
    names = container.get("Names") or []
    name = names[0] if names else container.get("Name") or ""
    return str(name).lstrip("/") or str(container.get("Id", ""))[:12]


def holder_of(
    containers: list[Mapping[str, Any]], network: Mapping[str, Any],
    address: ipaddress.IPv4Address,
) -> Mapping[str, Any] | None:
    """The container (from ``GET /containers/json?all=1``) that holds ``address`` on
    ``network``, running or not, or None.

    A running container holds the address it has; one not running holds the address its
    configuration asks for, which the daemon would give it at start.
    """
    name, ident = network.get("Name"), network.get("Id")
    wanted = str(address)
    for container in containers:
        attached = (container.get("NetworkSettings") or {}).get("Networks") or {}
        for key, settings in attached.items():
            settings = settings or {}
            # A container not started yet has no NetworkID; it names the network by its key.
            if key != name and not (ident and settings.get("NetworkID") == ident):
                continue
            held = {settings.get("IPAddress"), (settings.get("IPAMConfig") or {}).get(
                "IPv4Address")}
            if wanted in held:
                return container
    return None


def _describe(network: str, settings: Mapping[str, Any] | None) -> str:
    """``10.2.1.5/24 on weave-10.2.1.0-24``, or ``no address on NET``."""
    settings = settings or {}
    address = settings.get("IPAddress")
    if not address:
        return f"no address on {network}"
    return f"{address}/{settings.get('IPPrefixLen')} on {network}"


def confirm(info: Mapping[str, Any], interface: ipaddress.IPv4Interface,
            name: str | None = None) -> tuple[bool, str]:
    """Whether a started container (``GET /containers/{id}/json``) has the address its
    ``WEAVE_CIDR`` asked for, and the line that says so, or what it has instead.

    A container that has already stopped when inspected (a quick ``docker run --rm``) has no
    address any more; it passes if its configuration asks for the right one.
    """
    id12 = str(info.get("Id", ""))[:12]
    address = str(interface.ip)
    attached = (info.get("NetworkSettings") or {}).get("Networks") or {}
    if name is None:
        # The network its configuration gave it the address on (one made with the IPAM
        # driver may have any name), else the adapter's own name for the subnet.
        name = next((net for net, settings in attached.items()
                     if ((settings or {}).get("IPAMConfig") or {}).get("IPv4Address") == address),
                    network_name(interface.network))
    mine = attached.get(name) or {}
    if mine.get("IPAddress") == address and mine.get("IPPrefixLen") == interface.network.prefixlen:
        return True, f"container {id12} has {address} on {name}"
    running = bool((info.get("State") or {}).get("Running"))
    configured = (mine.get("IPAMConfig") or {}).get("IPv4Address")
    if not running and configured == address:
        return True, (f"container {id12} is configured for {address} on {name}; it had stopped "
                      f"before it could be inspected")
    has = ", ".join(_describe(net, settings) for net, settings in attached.items())
    state = "it was started and is left running" if running else "it has stopped"
    return False, (f"container {id12} asked for {address} on {name} ({ENV_NAME}={interface}) "
                   f"but has {has or 'no network'}; {state}")


def _container_of(path: str) -> str | None:
    """The container id or name in a ``/containers/{id}/start`` path (percent-decoded)."""
    parts = path.split("/")
    for index, part in enumerate(parts[:-1]):
        if part == "containers" and parts[index + 1]:
            return unquote(parts[index + 1])
    return None


# -- the adapter --------------------------------------------------------------------------------


class Engine(Protocol):
    """What the adapter needs of an engine client (``EngineClient``)."""

    def request(
        self, method: str, path: str, query: Mapping[str, Any] | None = None, body: Any = None
    ) -> defer.Deferred[Any]:
        """Send one API request; fire with the parsed answer, or fail with ``EngineError``."""
        ...


@dataclass(frozen=True)
class _Claim:
    """An address that passed the checks, reserved for a create the daemon has not answered."""

    container: str
    expires: float


class NetworkAdapter:
    """The hooks, bound to one engine. ``app`` is the ``Adapter`` to serve."""

    def __init__(
        self, engine: Engine, clock: Callable[[], float] = time.monotonic,
        ttl: float = RESERVATION_TTL, ipam_name: str | None = None,
        reservations: Reservations | None = None, manager: Engine | None = None,
        address: str | None = None, connect: Callable[[str], Engine] | None = None,
    ) -> None:
        """``clock`` and ``ttl`` time reservations out (see ``RESERVATION_TTL``).
        ``ipam_name``: the adapter is also served as the IPAM driver of that name; the networks
        it makes use it, and the hook and the driver share one set of reservations.
        ``manager``: a swarm manager's engine, where the adapter finds and makes its overlay
        networks while its own engine is a swarm worker (which can do neither).
        ``address``: this engine's address as the adapters of other hosts reach it; on a swarm
        the hold of an overlay address names it, so that another host can ask whether the
        holder still exists (``connect(address)`` makes a client for such an engine)."""
        self.engine = engine
        self.manager = manager
        self.address = address
        self._connect = connect or (lambda where: EngineClient(where, timeout=ENGINE_TIMEOUT))
        #: Overlay addresses whose creates are in flight, to hold once the daemon answers.
        self.overlay: set[tuple[str, str]] = set()
        self.clock = clock
        self.ttl = ttl
        # One create at a time between reading the engine's state and reserving an address.
        self.lock = defer.DeferredLock()
        self.claims: dict[tuple[str, str], _Claim] = {}
        self.ipam_name = ipam_name
        self.ipam = IpamDriver(self, reservations)
        self.app = Adapter("network")
        self.app.pre("POST /*/containers/create")(self.create)
        self.app.post("POST /*/containers/create")(self.created)
        self.app.post("POST /*/containers/*/start")(self.started)
        self.app.drivers["IpamDriver"] = self.ipam

    async def _engine(self, what: str, method: str, path: str, **kwargs: Any) -> Any:
        return await self._engine_of(self.engine, what, method, path, **kwargs)

    async def _engine_of(self, engine: Engine, what: str, method: str, path: str,
                         **kwargs: Any) -> Any:
        try:
            return await engine.request(method, path, **kwargs)
        except EngineError as exc:
            status = exc.status if 300 <= exc.status <= 599 else 502
            raise Refuse(status, f"{what}: {exc.message}") from exc

    async def create(self, request: Request) -> Request | None:
        """Pre-hook on container create: check the address ``WEAVE_CIDR`` asks for, make its
        network if missing, and attach the container to it with that address."""
        body = request.json
        if not isinstance(body, dict):
            return None
        try:
            interface = requested_interface(body)
        except BadCidr as exc:
            raise Refuse(400, str(exc)) from None
        if interface is None:
            return None
        try:
            check_address(interface)
            rewrite_create(body, interface)  # its conflicts, before any engine call
        except Conflict as exc:
            raise Refuse(409, str(exc)) from None
        name = (request.query.get("name") or [""])[0]
        who = f"container {name}" if name else "an unnamed container"
        await self.lock.acquire()
        try:
            network = await self._claim(interface, who)
        finally:
            self.lock.release()
        try:
            rewritten = rewrite_create(body, interface, network)
        except Conflict as exc:
            self.claims.pop((network, str(interface.ip)), None)
            raise Refuse(409, str(exc)) from None
        return request.with_json(rewritten)

    async def _swarm(self) -> tuple[bool, Engine | None]:
        """Whether this engine is in a swarm, and then the engine to find and make overlay
        networks on: this one on a manager, ``manager`` on a worker (None without it)."""
        info = await self._engine("reading the engine's swarm state", "GET", "/info")
        swarm = (info or {}).get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active":
            return False, None
        return True, self.engine if swarm.get("ControlAvailable") else self.manager

    async def _claim(self, interface: ipaddress.IPv4Interface, who: str) -> str:
        """Check ``interface`` against the engine and the reservations, create its network if
        missing, and reserve the address for the create of ``who`` (as messages name it).
        Gives the network's name.

        On a swarm the network is an attachable overlay network, so that containers on every
        host of the swarm share the subnet; it is found and made on a manager."""
        subnet, address = interface.network, interface.ip
        in_swarm, control = await self._swarm()
        networks = await self._engine("listing networks", "GET", "/networks")
        ipam_name, wanted = self.ipam_name, network_name(subnet)
        if in_swarm:
            wanted = overlay_name(subnet)
            if control is None:
                raise Refuse(502, f"network {wanted} for {interface}: this engine is a swarm "
                                  "worker, which can neither see nor make overlay networks; "
                                  "start the network adapter with --manager ADDRESS (a "
                                  "manager's engine)")
            # A worker lists only the overlay networks its containers use: the manager's list
            # has them all, and this engine's own has its local networks to stay clear of.
            if control is not self.engine:
                theirs = await self._engine_of(control, "listing the manager's networks",
                                               "GET", "/networks")
                known = {n.get("Id") for n in networks or []}
                networks = [*(networks or []),
                            *(n for n in theirs or [] if n.get("Id") not in known)]
            # Remote IPAM drivers on overlay networks are Swarm's to allocate, not ours.
            ipam_name = None
        try:
            network = find_network(networks or [], subnet, ipam_name, wanted)
            gateway = network_gateway(network, subnet) if network else first_host(subnet)
            check_address(interface, gateway)
        except Conflict as exc:
            raise Refuse(409, str(exc)) from None
        name = str(network.get("Name")) if network is not None else wanted
        containers = None
        if network is not None:
            containers = await self._engine("listing containers", "GET", "/containers/json",
                                            query={"all": "1"})
        if self.ipam_name is not None and not in_swarm:
            await self._check_reservations(subnet, address, name, containers or [])
        if in_swarm:
            await self._check_overlay_hold(subnet, address, name, containers or [])
        if network is not None:
            holder = holder_of(containers or [], network, address)
            if holder is not None:
                state = holder.get("State") or "not running"
                raise Refuse(409, f"{address} on network {name} is already held by container "
                                  f"{_container_name(holder)} ({str(holder.get('Id'))[:12]}, "
                                  f"{state})")
        now = self.clock()
        self.claims = {k: c for k, c in self.claims.items() if c.expires > now}
        claim = self.claims.get((name, str(address)))
        if claim is not None:
            raise Refuse(409, f"{address} on network {name} is being taken by "
                              f"{claim.container}, whose create is in flight")
        if network is None:
            body: dict[str, Any] = {
                "Name": name,
                "Driver": "bridge",
                "CheckDuplicate": True,
                "IPAM": {"Driver": ipam_name or "default",
                         "Config": [{"Subnet": str(subnet), "Gateway": str(gateway)}]},
                "Labels": {LABEL: "network"},
            }
            where = self.engine
            if in_swarm and control is not None:
                # Attachable: plain containers (not only services' tasks) may join it.
                body.update(Driver="overlay", Attachable=True)
                where = control
            await self._engine_of(where, f"creating network {name} for {interface}", "POST",
                                  "/networks/create", body=body)
            log.info("created network %s (%s, subnet %s, gateway %s)", name, body["Driver"],
                     subnet, gateway)
        self.claims[(name, str(address))] = _Claim(who, self.clock() + self.ttl)
        if in_swarm:
            self.overlay.add((str(subnet), str(address)))
        return name

    async def _check_overlay_hold(self, subnet: ipaddress.IPv4Network,
                                  address: ipaddress.IPv4Address, name: str,
                                  containers: list[Mapping[str, Any]]) -> None:
        """Refuse an overlay address a container of any host holds, as the reservations say
        (``ID@ENGINE``); a hold whose container is gone is dropped. Swarm's allocator would
        refuse it too, but only after its attach timeout (about 20 s), at start."""
        try:
            found = await self.ipam.reservations.get(str(subnet), str(address))
        except StoreUnavailable as exc:
            raise Refuse(503, f"{address} on network {name}: {exc}") from None
        if found is None or found[0] != "held" or "@" not in found[1]:
            return
        container, engine = found[1].split("@", 1)
        if engine == self.address:
            exists = any(str(c.get("Id", "")).startswith(container) for c in containers)
        else:
            try:
                await self._connect(engine).request("GET", f"/containers/{container}/json")
                exists = True
            except EngineError as exc:
                if exc.status != 404:
                    # Unknown, not free: Swarm's allocator still has the last word.
                    log.warning("%s on network %s: cannot ask %s about its holder %s: %s",
                                address, name, engine, container, exc.message)
                    return
                exists = False
        if exists:
            raise Refuse(409, f"{address} on network {name} is already held by container "
                              f"{container} on the host whose engine is {engine}")
        try:
            await self.ipam.reservations.drop(str(subnet), str(address))
        except StoreUnavailable as exc:
            raise Refuse(503, f"{address} on network {name}: {exc}") from None

    async def _check_reservations(self, subnet: ipaddress.IPv4Network,
                                  address: ipaddress.IPv4Address, name: str,
                                  containers: list[Mapping[str, Any]]) -> None:
        """Refuse an address the IPAM driver gave, or that a container holds; a hold of a
        container that no longer exists here (removed before it ever started, so never
        released by the daemon) is dropped."""
        try:
            found = await self.ipam.reservations.get(str(subnet), str(address))
            if found is None:
                return
            kind, who = found
            if kind == "held" and not any(str(c.get("Id", "")).startswith(who)
                                          for c in containers):
                await self.ipam.reservations.drop(str(subnet), str(address))
                return
        except StoreUnavailable as exc:
            raise Refuse(503, f"{address} on network {name}: {exc}") from None
        if kind == "given":
            raise Refuse(409, f"{address} on network {name} is already given by the IPAM "
                              f"driver {self.ipam_name} ({who})")
        raise Refuse(409, f"{address} on network {name} is already held by container {who}")

    async def created(self, request: Request, response: Response) -> None:
        """Post-hook on container create: the daemon has answered, so the address is either
        held by the new container or free again; either way its reservation ends."""
        body = request.json
        try:
            interface = requested_interface(body) if isinstance(body, dict) else None
        except BadCidr:
            return None
        if interface is not None:
            for key in [k for k in self.claims if k[1] == str(interface.ip)]:
                self.claims.pop(key, None)
            created = response.json if response.code == 201 else None
            overlay = (str(interface.network), str(interface.ip))
            if overlay in self.overlay:
                self.overlay.discard(overlay)
                if isinstance(created, dict) and created.get("Id") and self.address:
                    # Held across hosts until a create that wants it finds the holder gone.
                    who = f"{str(created['Id'])[:12]}@{self.address}"
                    try:
                        await self.ipam.reservations.take(*overlay, "held", who)
                    except StoreUnavailable as exc:
                        log.warning("%s not recorded as held: %s", interface.ip, exc)
                return None
            # Held only where the IPAM driver serves: the daemon's release of the endpoint,
            # which ends the hold, reaches no one else.
            if self.ipam_name is not None and isinstance(created, dict) and created.get("Id"):
                # The container holds the address from now on, started or not: the IPAM
                # driver never hands it to another endpoint.
                try:
                    await self.ipam.hold(interface.network, interface.ip,
                                         str(created["Id"])[:12])
                except StoreUnavailable as exc:
                    log.warning("%s not recorded as held: %s", interface.ip, exc)
        return None

    async def started(self, request: Request, response: Response) -> Response | None:
        """Post-hook on container start: confirm in the log that the container has the address
        it asked for; answer 500 (and log an error) if it has not."""
        if response.code not in (204, 304):
            return None
        ident = _container_of(request.path)
        if ident is None:
            return None
        try:
            info = await self.engine.request("GET", f"/containers/{ident}/json")
        except EngineError as exc:
            log.warning("cannot confirm the address of container %s: %s", ident, exc.message)
            return None
        if not isinstance(info, dict):
            return None
        try:
            interface = requested_interface(info.get("Config") or {})
        except BadCidr as exc:
            log.warning("container %s: %s", ident, exc)
            return None
        if interface is None:
            return None
        confirmed, message = confirm(info, interface)
        if confirmed:
            log.info("%s", message)
            return None
        log.error("ADDRESS MISMATCH: %s", message)
        raise Refuse(500, message)


class Reservations:
    """The addresses given out (by the IPAM driver, to an endpoint) or held (by a container a
    ``WEAVE_CIDR`` create attached, until its endpoint is first released), by subnet and
    address: in this process's memory. ``EtcdReservations`` keeps the same in etcd, for hosts
    that share the subnets."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], tuple[str, str]] = {}

    async def get(self, subnet: str, address: str) -> tuple[str, str] | None:
        """``(kind, who)`` of an address, ``kind`` being ``given`` or ``held``; None if free."""
        return self.entries.get((subnet, address))

    async def take(self, subnet: str, address: str, kind: str, who: str) -> bool:
        """Record the address as ``kind`` for ``who`` if it is free, or held and now given
        (the holder's own endpoint); whether it did."""
        found = self.entries.get((subnet, address))
        if found is not None and not (found[0] == "held" and kind == "given"):
            return False
        self.entries[(subnet, address)] = (kind, who)
        return True

    async def drop(self, subnet: str, address: str) -> None:
        """Free the address."""
        self.entries.pop((subnet, address), None)

    async def used(self, subnet: str) -> set[str]:
        """The addresses of ``subnet`` given or held."""
        return {address for (net, address) in self.entries if net == subnet}


class SqliteReservations(Reservations):
    """``Reservations`` in one SQLite file (``--state sqlite:PATH``), for adapters on hosts
    that share a file system, or one adapter that keeps its reservations across restarts. Each
    take is one ``BEGIN IMMEDIATE`` transaction, so two processes never take one address."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        # Autocommit: transactions are begun explicitly, IMMEDIATE, as in the volumes adapter.
        self.db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS addresses (subnet TEXT NOT NULL, "
                        "address TEXT NOT NULL, kind TEXT NOT NULL, who TEXT NOT NULL, "
                        "PRIMARY KEY (subnet, address))")

    async def get(self, subnet: str, address: str) -> tuple[str, str] | None:
        row = self.db.execute("SELECT kind, who FROM addresses WHERE subnet = ? AND address = ?",
                              (subnet, address)).fetchone()
        return None if row is None else (row[0], row[1])

    async def take(self, subnet: str, address: str, kind: str, who: str) -> bool:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute("SELECT kind FROM addresses WHERE subnet = ? AND address = ?",
                                  (subnet, address)).fetchone()
            taken = row is None or (row[0] == "held" and kind == "given")
            if taken:
                self.db.execute("INSERT OR REPLACE INTO addresses VALUES (?, ?, ?, ?)",
                                (subnet, address, kind, who))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return taken

    async def drop(self, subnet: str, address: str) -> None:
        self.db.execute("DELETE FROM addresses WHERE subnet = ? AND address = ?",
                        (subnet, address))

    async def used(self, subnet: str) -> set[str]:
        return {row[0] for row in self.db.execute(
            "SELECT address FROM addresses WHERE subnet = ?", (subnet,))}


def open_reservations(where: str | None) -> Reservations:
    """The reservations ``--state`` names: ``etcd://HOST:PORT[,...]``, ``sqlite:PATH``, or
    this process's memory (None). ``ValueError`` for anything else."""
    if where is None:
        return Reservations()
    if where.startswith("etcd://"):
        return EtcdReservations(where)
    if where.startswith("sqlite:") and where != "sqlite:":
        return SqliteReservations(where.removeprefix("sqlite:"))
    raise ValueError(f"--state {where!r}: give etcd://HOST:PORT[,HOST:PORT...] or sqlite:PATH")


class EtcdReservations(Reservations):
    """``Reservations`` in etcd (``--state etcd://HOST:PORT[,...]``): keys
    ``/powerstrip/network/addresses/SUBNET/ADDRESS`` holding ``{"kind", "who"}``, each taken
    in a transaction on the revision read, so two hosts never take one address."""

    PREFIX = "/powerstrip/network/addresses/"

    def __init__(self, url: str) -> None:
        from powerstrip.kit.etcd import Etcd

        super().__init__()
        self.etcd = Etcd(url)

    def _key(self, subnet: str, address: str = "") -> str:
        return f"{self.PREFIX}{subnet.replace('/', '_')}/{address}"

    async def get(self, subnet: str, address: str) -> tuple[str, str] | None:
        entry = await self.etcd.get(self._key(subnet, address))
        if entry is None:
            return None
        value = json.loads(entry.value)
        return value["kind"], value["who"]

    async def take(self, subnet: str, address: str, kind: str, who: str) -> bool:
        from powerstrip.kit import etcd

        key = self._key(subnet, address)
        entry = await self.etcd.get(key)
        if entry is None:
            guard = etcd.created(key, 0)
        elif json.loads(entry.value)["kind"] == "held" and kind == "given":
            guard = etcd.modified(key, entry.mod_revision)
        else:
            return False
        return await self.etcd.txn([guard], [etcd.put(key, json.dumps({"kind": kind,
                                                                       "who": who}))])

    async def drop(self, subnet: str, address: str) -> None:
        from powerstrip.kit import etcd

        await self.etcd.txn([], [etcd.delete(self._key(subnet, address))])

    async def used(self, subnet: str) -> set[str]:
        start = len(self._key(subnet))
        return {entry.key[start:] for entry in await self.etcd.prefix(self._key(subnet))}


class IpamDriver:
    """The adapter's addresses as a Docker IPAM driver (``IpamDriver.*`` calls), for
    ``--plugin powerstrip-ipam``: ``docker network create --ipam-driver powerstrip-ipam
    --subnet 10.2.1.0/24 weave``, then ``docker run --network weave --ip 10.2.1.5`` or plain
    ``--network weave``. One set of reservations with the ``WEAVE_CIDR`` hook: an address the
    driver gave is refused to the hook, and one a hook's container holds (from its create, until
    the daemon first releases it) or a create in flight claims is never given out by the driver.
    Pools must be given (``--subnet``); IPv6 is not served."""

    def __init__(self, adapter: NetworkAdapter, reservations: Reservations | None = None) -> None:
        self.adapter = adapter
        self.reservations = reservations or Reservations()
        #: Pool ID (the subnet) to the subnet, and how many networks use it.
        self.pools: dict[str, tuple[ipaddress.IPv4Network, int]] = {}

    async def hold(self, subnet: ipaddress.IPv4Network, address: ipaddress.IPv4Address,
                   container: str) -> None:
        """Keep ``address`` for ``container`` (a create the hook attached)."""
        await self.reservations.take(str(subnet), str(address), "held", container)

    async def call(self, method: str, document: dict[str, Any]) -> dict[str, Any]:
        """The answer to ``IpamDriver.METHOD``; a refusal raises ``Refuse``."""
        from powerstrip.kit.etcd import StoreUnavailable

        try:
            return await self._call(method, document)
        except StoreUnavailable as exc:
            raise Refuse(503, str(exc)) from None

    async def _call(self, method: str, document: dict[str, Any]) -> dict[str, Any]:
        if method == "GetCapabilities":
            return {"RequiresMACAddress": False, "RequiresRequestReplay": False}
        if method == "GetDefaultAddressSpaces":
            return {"LocalDefaultAddressSpace": "powerstrip-local",
                    "GlobalDefaultAddressSpace": "powerstrip-global"}
        if method == "RequestPool":
            return self._request_pool(document)
        if method == "ReleasePool":
            pool = str(document.get("PoolID") or "")
            if pool in self.pools:
                subnet, users = self.pools[pool]
                if users > 1:
                    self.pools[pool] = (subnet, users - 1)
                else:
                    del self.pools[pool]
            return {}
        if method == "RequestAddress":
            return await self._request_address(document)
        if method == "ReleaseAddress":
            pool, address = str(document.get("PoolID") or ""), str(document.get("Address") or "")
            # The address is free again; a container's hold ends with its endpoint.
            await self.reservations.drop(pool, address.partition("/")[0])
            log.info("ipam: released %s on %s", address, pool)
            return {}
        raise Refuse(404, f"IpamDriver.{method} is not an IPAM driver call")

    def _request_pool(self, document: dict[str, Any]) -> dict[str, Any]:
        if document.get("V6"):
            raise Refuse(400, "the powerstrip IPAM driver serves IPv4 pools only")
        pool = document.get("Pool")
        if not pool:
            raise Refuse(400, "the powerstrip IPAM driver needs the network's subnet: "
                              "docker network create --ipam-driver ... --subnet 10.2.1.0/24")
        try:
            subnet = ipaddress.IPv4Network(str(pool))
        except ValueError as exc:
            raise Refuse(400, f"pool {pool!r}: {exc}") from None
        key = str(subnet)
        _, users = self.pools.get(key, (subnet, 0))
        self.pools[key] = (subnet, users + 1)
        return {"PoolID": key, "Pool": key, "Data": {}}

    async def _request_address(self, document: dict[str, Any]) -> dict[str, Any]:
        pool = str(document.get("PoolID") or "")
        if pool not in self.pools:
            try:  # a pool of an earlier run of the adapter: dockerd does not ask for it again
                self.pools[pool] = (ipaddress.IPv4Network(pool), 1)
            except ValueError:
                raise Refuse(404, f"no pool {pool!r} here") from None
        subnet = self.pools[pool][0]
        options = document.get("Options") or {}
        purpose = "the gateway" if options.get("RequestAddressType") == \
            "com.docker.network.gateway" else "an endpoint"
        asked = document.get("Address")
        if asked:
            try:
                address = ipaddress.IPv4Address(str(asked))
            except ValueError as exc:
                raise Refuse(400, f"address {asked!r}: {exc}") from None
            if address not in subnet or address in (subnet.network_address,
                                                    subnet.broadcast_address):
                raise Refuse(400, f"{address} is not a host address of {subnet}")
            if not await self.reservations.take(pool, str(address), "given", purpose):
                found = await self.reservations.get(pool, str(address))
                raise Refuse(409, f"{address} on {subnet} is already given "
                                  f"({found[1] if found else 'just now'})")
        else:
            now = self.adapter.clock()
            claimed = {addr for (_, addr), claim in self.adapter.claims.items()
                       if claim.expires > now}
            used = await self.reservations.used(pool)
            address = None
            for host in subnet.hosts():
                if str(host) in used or str(host) in claimed:
                    continue
                if await self.reservations.take(pool, str(host), "given", purpose):
                    address = host
                    break
            if address is None:
                raise Refuse(409, f"no address left on {subnet}")
        log.info("ipam: gave %s on %s to %s", address, subnet, purpose)
        return {"Address": f"{address}/{subnet.prefixlen}", "Data": {}}


def argument_parser() -> argparse.ArgumentParser:
    """The command line: the SDK's ``--listen`` / ``--unix``, and ``--docker``."""
    parser = Adapter("network").argument_parser()
    parser.add_argument(
        "--docker", metavar="ADDR", default="unix:///var/run/docker.sock",
        help="the Docker Engine to manage networks on, reached directly, not through Powerstrip "
             "(unix:///path, tcp://HOST:PORT; default %(default)s)",
    )
    parser.add_argument(
        "--state", metavar="STORE", default=None,
        help="where the addresses the IPAM driver gives and the hook's containers hold are "
             "kept: etcd://HOST:PORT[,HOST:PORT...] for hosts that share subnets, sqlite:PATH "
             "for one file; default this process's memory")
    parser.add_argument(
        "--manager", metavar="ADDR", default=None,
        help="a swarm manager's Docker Engine (unix:///path, tcp://HOST:PORT), reached directly: "
             "while this engine is a swarm worker, the adapter finds and makes its overlay "
             "networks there")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Serve the network adapter until interrupted."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    try:
        parse_address(args.docker)
    except AddressError as exc:
        parser.error(str(exc))
    try:
        reservations = open_reservations(args.state)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    manager = None
    if args.manager:
        try:
            parse_address(args.manager)
        except AddressError as exc:
            parser.error(str(exc))
        manager = EngineClient(args.manager, timeout=ENGINE_TIMEOUT)
    adapter = NetworkAdapter(EngineClient(args.docker, timeout=ENGINE_TIMEOUT),
                             ipam_name=args.plugin, reservations=reservations, manager=manager,
                             address=args.docker)
    adapter.app.serve(args)


if __name__ == "__main__":
    main()

"""The network adapter (``adapters/network.py``): its pure parts, and its hooks through
``Adapter.handle`` against an in-memory engine."""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer

from powerstrip.hooks.wire import (
    ClientRequest,
    ServerResponse,
    parse_post_hook_answer,
    parse_pre_hook_answer,
    post_hook_call,
    pre_hook_call,
)
from powerstrip.kit.engine_api import EngineError

ROOT = Path(__file__).resolve().parents[2]


def _load() -> Any:
    # adapters/ is a directory of scripts, not a package.
    path = ROOT / "adapters" / "network.py"
    spec = importlib.util.spec_from_file_location("network_adapter", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


net = _load()

NAME = "weave-10.2.1.0-24"
IFACE = ipaddress.IPv4Interface("10.2.1.5/24")
# What docker CLI 28 sends for ``docker create -e WEAVE_CIDR=10.2.1.5/24 busybox`` (trimmed).
CLI_BODY: dict[str, Any] = {
    "Env": ["WEAVE_CIDR=10.2.1.5/24"],
    "Image": "busybox",
    "HostConfig": {"NetworkMode": "default", "Memory": 0},
    "NetworkingConfig": {"EndpointsConfig": {"default": {
        "IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "",
    }}},
}


# -- parsing WEAVE_CIDR --------------------------------------------------------------------------


def test_parse_cidr_reads_address_and_subnet():
    interface = net.parse_cidr("10.2.1.5/24")
    assert interface.ip == ipaddress.IPv4Address("10.2.1.5")
    assert interface.network == ipaddress.IPv4Network("10.2.1.0/24")


@pytest.mark.parametrize("text", [
    "", "10.2.1/24", "10.2.1.5", "10.2.1.5/", "10.2.1.5/33", "256.2.1.5/24", "010.2.1.5/24",
    "10.2.1.5/024", "10.2.1.5/255.255.255.0", " 10.2.1.5/24", "10.2.1.5/24 ", "fe80::1/64",
    "weave", "10.2.1.5/24,10.2.2.5/24", "1\u0660.2.1.5/24", "10.2.1.5/2\u0664",
])
def test_parse_cidr_refuses_what_is_not_an_ipv4_cidr(text):
    with pytest.raises(net.BadCidr, match="WEAVE_CIDR="):
        net.parse_cidr(text)


@pytest.mark.parametrize("prefix", [0, 31, 32])
def test_parse_cidr_refuses_subnets_without_room_for_a_container(prefix):
    with pytest.raises(net.BadCidr, match=f"/{prefix} subnet has no room"):
        net.parse_cidr(f"10.2.1.5/{prefix}")


@given(st.ip_addresses(v=4), st.integers(1, 30))
def test_parse_cidr_reads_every_ipv4_cidr(address, prefix):
    assert net.parse_cidr(f"{address}/{prefix}") == ipaddress.IPv4Interface(f"{address}/{prefix}")


def test_weave_cidr_is_found_among_other_variables():
    env = ["PATH=/bin", "WEAVE_CIDR_X=1", "WEAVE_CIDR=10.2.1.5/24", "A=WEAVE_CIDR=x"]
    assert net.weave_cidr(env) == "10.2.1.5/24"


@pytest.mark.parametrize("env", [None, [], ["A=1"], "WEAVE_CIDR=10.2.1.5/24", {"a": 1},
                                 [3, None], ["weave_cidr=10.2.1.5/24"]])
def test_no_weave_cidr(env):
    assert net.weave_cidr(env) is None


def test_weave_cidr_twice_with_one_value_is_that_value():
    assert net.weave_cidr(["WEAVE_CIDR=10.2.1.5/24", "WEAVE_CIDR=10.2.1.5/24"]) == "10.2.1.5/24"


def test_weave_cidr_twice_with_different_values_is_refused():
    with pytest.raises(net.BadCidr, match="more than once"):
        net.weave_cidr(["WEAVE_CIDR=10.2.1.5/24", "WEAVE_CIDR=10.2.1.6/24"])


@pytest.mark.parametrize("entry", ["WEAVE_CIDR", "WEAVE_CIDR="])
def test_weave_cidr_without_a_value_is_refused(entry):
    with pytest.raises(net.BadCidr):
        net.parse_cidr(net.weave_cidr([entry]) or "")


@given(st.lists(st.from_regex(r"[A-Z_]{1,8}=[a-z0-9]{0,5}", fullmatch=True)),
       st.ip_addresses(v=4), st.integers(1, 30), st.integers(0, 10))
def test_weave_cidr_anywhere_in_env(others, address, prefix, position):
    others = [e for e in others if not e.startswith("WEAVE_CIDR=")]
    env = list(others)
    env.insert(min(position, len(env)), f"WEAVE_CIDR={address}/{prefix}")
    assert net.requested_interface({"Env": env}) == ipaddress.IPv4Interface(f"{address}/{prefix}")


def test_env_key_is_read_as_the_daemon_reads_it():
    # Go's encoding/json matches "env" to Env, and the last of two spellings wins.
    assert net.requested_interface({"env": ["WEAVE_CIDR=10.2.1.5/24"]}) == IFACE
    body = {"Env": ["WEAVE_CIDR=10.9.9.9/24"], "ENV": ["WEAVE_CIDR=10.2.1.5/24"]}
    assert net.requested_interface(body) == IFACE
    assert net.requested_interface({"Env": ["WEAVE_CIDR=10.2.1.5/24"], "env": None}) is None


# -- naming and addresses ----------------------------------------------------------------------


def test_network_name():
    assert net.network_name(ipaddress.IPv4Network("10.2.1.0/24")) == NAME
    assert net.network_name(IFACE.network) == NAME
    assert net.network_name(ipaddress.IPv4Network("192.168.0.0/16")) == "weave-192.168.0.0-16"


@given(st.ip_addresses(v=4), st.integers(1, 30))
def test_network_name_round_trips(address, prefix):
    subnet = ipaddress.IPv4Interface(f"{address}/{prefix}").network
    name = net.network_name(subnet)
    assert name.startswith("weave-")
    assert net.subnet_of_name(name) == subnet


@pytest.mark.parametrize("name", ["bridge", "weave-10.2.1.5-24", "weave-10.2.1.0-024",
                                  "weave-10.2.1.0/24", "weave-10.2.1.0-33", "xweave-10.2.1.0-24"])
def test_other_names_are_not_the_adapters(name):
    assert net.subnet_of_name(name) is None


@pytest.mark.parametrize(("text", "what"), [
    ("10.2.1.0/24", "network address"),
    ("10.2.1.255/24", "broadcast address"),
    ("10.2.0.0/16", "network address"),
    ("10.2.255.255/16", "broadcast address"),
])
def test_network_and_broadcast_addresses_are_refused(text, what):
    with pytest.raises(net.Conflict, match=what) as caught:
        net.check_address(net.parse_cidr(text))
    assert text.split("/")[0] in str(caught.value)
    assert net.network_name(net.parse_cidr(text).network) in str(caught.value)


def test_the_gateway_is_refused():
    with pytest.raises(net.Conflict, match=f"10.2.1.1 is the gateway of network {NAME}"):
        net.check_address(net.parse_cidr("10.2.1.1/24"), net.first_host(IFACE.network))


@given(st.ip_addresses(v=4), st.integers(1, 30))
def test_every_other_host_address_is_accepted(address, prefix):
    interface = ipaddress.IPv4Interface(f"{address}/{prefix}")
    subnet = interface.network
    gateway = net.first_host(subnet)
    if interface.ip in (subnet.network_address, subnet.broadcast_address, gateway):
        with pytest.raises(net.Conflict):
            net.check_address(interface, gateway)
    else:
        net.check_address(interface, gateway)


# -- rewriting the create body -----------------------------------------------------------------


def test_rewrite_attaches_to_the_network_with_the_address():
    body = net.rewrite_create(CLI_BODY, IFACE)
    assert body["HostConfig"] == {"NetworkMode": NAME, "Memory": 0}
    endpoints = body["NetworkingConfig"]["EndpointsConfig"]
    assert list(endpoints) == [NAME]
    assert endpoints[NAME]["IPAMConfig"] == {"IPv4Address": "10.2.1.5"}
    assert endpoints[NAME]["MacAddress"] == ""
    assert body["Env"] == CLI_BODY["Env"]
    assert body["Image"] == "busybox"


def test_rewrite_of_a_minimal_body():
    body = net.rewrite_create({"Env": ["WEAVE_CIDR=10.2.1.5/24"]}, IFACE)
    assert body == {
        "Env": ["WEAVE_CIDR=10.2.1.5/24"],
        "HostConfig": {"NetworkMode": NAME},
        "NetworkingConfig": {
            "EndpointsConfig": {NAME: {"IPAMConfig": {"IPv4Address": "10.2.1.5"}}},
        },
    }


def test_rewrite_does_not_change_its_argument():
    original = copy.deepcopy(CLI_BODY)
    net.rewrite_create(CLI_BODY, IFACE)
    assert original == CLI_BODY


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.text(min_size=1, max_size=12), _JSON, max_size=6))
def test_rewrite_keeps_every_other_field_and_is_idempotent(extra):
    reserved = {"hostconfig", "networkingconfig", "env"}
    # Keys the CLI's body has are overridden by it below, so they are not "other fields".
    extra = {k: v for k, v in extra.items() if k.lower() not in reserved and k not in CLI_BODY}
    body = {**extra, **CLI_BODY}
    once = net.rewrite_create(body, IFACE)
    for key, value in extra.items():
        assert once[key] == value
    assert net.rewrite_create(once, IFACE) == once


@pytest.mark.parametrize("mode", ["bridge", "host", "none", "container:web", "other-net",
                                  "weave-10.2.2.0-24"])
def test_rewrite_refuses_another_network_mode(mode):
    body = {**CLI_BODY, "HostConfig": {"NetworkMode": mode}}
    with pytest.raises(net.Conflict) as caught:
        net.rewrite_create(body, IFACE)
    message = str(caught.value)
    assert repr(mode) in message and NAME in message and "10.2.1.5" in message


def test_rewrite_accepts_the_network_named_explicitly_and_keeps_its_settings():
    body = {
        "Env": ["WEAVE_CIDR=10.2.1.5/24"],
        "HostConfig": {"NetworkMode": NAME},
        "NetworkingConfig": {"EndpointsConfig": {NAME: {
            "Aliases": ["db"], "IPAMConfig": {"IPv4Address": "10.2.1.5", "IPv6Address": ""},
        }}},
    }
    rewritten = net.rewrite_create(body, IFACE)
    settings = rewritten["NetworkingConfig"]["EndpointsConfig"][NAME]
    assert settings == {"Aliases": ["db"],
                        "IPAMConfig": {"IPv6Address": "", "IPv4Address": "10.2.1.5"}}


def test_rewrite_refuses_another_address_asked_with_ip():
    body = {**CLI_BODY, "NetworkingConfig": {"EndpointsConfig": {
        NAME: {"IPAMConfig": {"IPv4Address": "10.2.1.9"}}}}}
    with pytest.raises(net.Conflict, match="also asks for 10.2.1.9"):
        net.rewrite_create(body, IFACE)


def test_rewrite_refuses_joining_another_network_too():
    body = {**CLI_BODY, "NetworkingConfig": {"EndpointsConfig": {"backend": {}}}}
    with pytest.raises(net.Conflict, match="also asks to join 'backend'"):
        net.rewrite_create(body, IFACE)


def test_rewrite_replaces_every_spelling_of_a_key():
    # The daemon merges "hostconfig" into HostConfig: a NetworkMode left under another
    # spelling would survive the rewrite and win.
    body = {"Env": ["WEAVE_CIDR=10.2.1.5/24"],
            "HostConfig": {"Memory": 5},
            "hostconfig": {"networkmode": "default", "CpuShares": 2},
            "networkingconfig": {"endpointsconfig": {"default": {"aliases": None}}}}
    rewritten = net.rewrite_create(body, IFACE)
    assert "hostconfig" not in rewritten and "networkingconfig" not in rewritten
    assert rewritten["HostConfig"] == {"Memory": 5, "CpuShares": 2, "NetworkMode": NAME}
    assert rewritten["NetworkingConfig"] == {"EndpointsConfig": {
        NAME: {"aliases": None, "IPAMConfig": {"IPv4Address": "10.2.1.5"}}}}


def test_rewrite_folds_keys_as_go_does():
    # U+212A KELVIN SIGN folds to k in Go's key matching.
    body = {"Env": ["WEAVE_CIDR=10.2.1.5/24"], "HostConfig": {"Networ\u212aMode": "host"}}
    with pytest.raises(net.Conflict, match="'host'"):
        net.rewrite_create(body, IFACE)


def test_rewrite_sees_a_mode_under_another_spelling():
    body = {"Env": ["WEAVE_CIDR=10.2.1.5/24"], "hostConfig": {"networkMode": "host"}}
    with pytest.raises(net.Conflict, match="'host'"):
        net.rewrite_create(body, IFACE)


# -- the engine's networks and containers ------------------------------------------------------


def network(name, subnet, gateway="", ident=None, driver="bridge"):
    config = [{"Subnet": subnet, "Gateway": gateway}] if subnet else []
    return {"Name": name, "Id": ident or f"id-{name}", "Driver": driver,
            "IPAM": {"Driver": "default", "Config": config}, "Labels": {}}


BRIDGE = network("bridge", "172.17.0.0/16", "172.17.0.1")
HOST = network("host", None)
NONE = network("none", None)


def test_find_network_when_there_is_none_yet():
    assert net.find_network([BRIDGE, HOST, NONE], IFACE.network) is None


def test_find_network_finds_the_adapters_network():
    mine = network(NAME, "10.2.1.0/24", "10.2.1.1")
    assert net.find_network([BRIDGE, mine], IFACE.network) is mine


def test_an_overlapping_network_is_a_conflict():
    other = network("backend", "10.2.0.0/16")
    with pytest.raises(net.Conflict) as caught:
        net.find_network([BRIDGE, other], IFACE.network)
    message = str(caught.value)
    assert "10.2.1.0/24" in message and "backend" in message and "10.2.0.0/16" in message


def test_the_same_subnet_under_another_name_is_a_conflict():
    with pytest.raises(net.Conflict, match="overlaps network mine"):
        net.find_network([network("mine", "10.2.1.0/24")], IFACE.network)


def test_the_adapters_name_with_another_subnet_is_a_conflict():
    with pytest.raises(net.Conflict, match=f"network {NAME} exists with subnet 10.3.0.0/24"):
        net.find_network([network(NAME, "10.3.0.0/24")], IFACE.network)


def test_network_gateway():
    assert str(net.network_gateway(network(NAME, "10.2.1.0/24", "10.2.1.254"), IFACE.network)) \
        == "10.2.1.254"
    assert str(net.network_gateway(network(NAME, "10.2.1.0/24", ""), IFACE.network)) == "10.2.1.1"


def container(name, networks, state="running", ident=None):
    return {"Id": ident or (name * 64)[:64], "Names": [f"/{name}"], "State": state,
            "NetworkSettings": {"Networks": networks}}


def endpoint(address="", asked=None, network_id=""):
    return {"IPAMConfig": {"IPv4Address": asked} if asked else None, "IPAddress": address,
            "NetworkID": network_id}


MINE = network(NAME, "10.2.1.0/24", "10.2.1.1", ident="n" * 64)
ADDRESS = IFACE.ip


def test_a_running_container_holds_its_address():
    web = container("web", {NAME: endpoint("10.2.1.5", network_id=MINE["Id"])})
    assert net.holder_of([web], MINE, ADDRESS) is web


def test_a_container_not_started_holds_the_address_it_asks_for():
    web = container("web", {NAME: endpoint(asked="10.2.1.5")}, state="created")
    assert net.holder_of([web], MINE, ADDRESS) is web


def test_a_network_renamed_since_is_known_by_its_id():
    web = container("web", {"renamed": endpoint("10.2.1.5", network_id=MINE["Id"])})
    assert net.holder_of([web], MINE, ADDRESS) is web


def test_the_same_address_on_another_network_is_not_held():
    web = container("web", {"other": endpoint("10.2.1.5", asked="10.2.1.5", network_id="x")})
    stopped = container("db", {NAME: endpoint("", None)}, state="exited")
    assert net.holder_of([web, stopped], MINE, ADDRESS) is None


def _info(networks, running=True, env=("WEAVE_CIDR=10.2.1.5/24",)):
    return {"Id": "c" * 64, "Config": {"Env": list(env)}, "State": {"Running": running},
            "NetworkSettings": {"Networks": networks}}


def test_confirm_the_address():
    info = _info({NAME: {"IPAddress": "10.2.1.5", "IPPrefixLen": 24}})
    assert net.confirm(info, IFACE) == (True, f"container cccccccccccc has 10.2.1.5 on {NAME}")


def test_confirm_a_container_that_stopped_before_inspection_by_its_configuration():
    info = _info({NAME: {"IPAddress": "", "IPAMConfig": {"IPv4Address": "10.2.1.5"}}},
                 running=False)
    confirmed, message = net.confirm(info, IFACE)
    assert confirmed and "configured for 10.2.1.5" in message


@pytest.mark.parametrize(("networks", "has"), [
    ({"bridge": {"IPAddress": "172.17.0.2", "IPPrefixLen": 16}}, "172.17.0.2/16 on bridge"),
    ({NAME: {"IPAddress": "10.2.1.7", "IPPrefixLen": 24}}, f"10.2.1.7/24 on {NAME}"),
    ({NAME: {"IPAddress": "10.2.1.5", "IPPrefixLen": 16}}, f"10.2.1.5/16 on {NAME}"),
    ({}, "no network"),
])
def test_confirm_reports_what_the_container_has_instead(networks, has):
    confirmed, message = net.confirm(_info(networks), IFACE)
    assert not confirmed
    assert f"asked for 10.2.1.5 on {NAME}" in message and f"has {has}" in message
    assert "left running" in message


# -- the hooks, against an in-memory engine ----------------------------------------------------


class FakeEngine:
    """Answers the few API calls the adapter makes, from lists the test fills."""

    def __init__(self) -> None:
        self.networks: list[dict[str, Any]] = [BRIDGE, HOST, NONE]
        self.containers: list[dict[str, Any]] = []
        self.inspect: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.created: list[dict[str, Any]] = []
        self.failure: EngineError | None = None
        self.hold: defer.Deferred[None] | None = None
        self.swarm: dict[str, Any] = {"LocalNodeState": "inactive"}

    def request(self, method, path, query=None, body=None):
        self.calls.append((method, path))
        if self.failure is not None:
            return defer.fail(self.failure)
        answer = self._answer(method, path, query, body)
        if self.hold is not None and (method, path) == ("GET", "/networks"):
            held, self.hold = self.hold, None
            return held.addCallback(lambda _: answer)
        return defer.succeed(answer)

    def _answer(self, method, path, query, body):
        if (method, path) == ("GET", "/networks"):
            return copy.deepcopy(self.networks)
        if (method, path) == ("GET", "/info"):
            return {"Swarm": copy.deepcopy(self.swarm)}
        if (method, path) == ("GET", "/containers/json"):
            assert query == {"all": "1"}
            return copy.deepcopy(self.containers)
        if (method, path) == ("POST", "/networks/create"):
            self.created.append(body)
            ipam = body["IPAM"]["Config"][0]
            self.networks.append(network(body["Name"], ipam["Subnet"], ipam["Gateway"],
                                         driver=body["Driver"]))
            return {"Id": f"id-{body['Name']}", "Warning": ""}
        if method == "GET" and path.startswith("/containers/") and path.endswith("/json"):
            ident = path.split("/")[2]
            if ident not in self.inspect:
                raise AssertionError(f"unexpected inspect of {ident}")
            return copy.deepcopy(self.inspect[ident])
        raise AssertionError(f"unexpected engine call {method} {path}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fired(d: defer.Deferred) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def make(engine: FakeEngine | None = None, clock: Clock | None = None) -> tuple[Any, FakeEngine]:
    engine = engine or FakeEngine()
    return net.NetworkAdapter(engine, clock=clock or Clock(), ttl=10.0), engine


def create_call(body: Any, name: str = "web") -> ClientRequest:
    target = "/v1.41/containers/create" + (f"?name={name}" if name else "")
    text = body if isinstance(body, str) or body is None else json.dumps(body)
    return ClientRequest("POST", target, text)


def pre(adapter: Any, request: ClientRequest) -> defer.Deferred:
    return adapter.app.handle(pre_hook_call(request))


def created(adapter: Any, request: ClientRequest, code: int = 201) -> None:
    """The create post-hook call the proxy makes once the daemon has answered."""
    sent = ServerResponse("application/json", '{"Id": "x", "Warnings": []}', code)
    status, answer = fired(adapter.app.handle(post_hook_call(request, sent)))
    assert status == 200, answer
    assert parse_post_hook_answer(answer, sent) == sent


def accepted(adapter: Any, request: ClientRequest) -> ClientRequest:
    status, answer = fired(pre(adapter, request))
    assert status == 200, answer
    return parse_pre_hook_answer(answer, request)


def refused(adapter: Any, request: ClientRequest, expected: int = 409) -> str:
    status, answer = fired(pre(adapter, request))
    assert status == expected, answer
    return json.loads(answer)["message"]


def test_a_create_without_weave_cidr_passes_unchanged_without_engine_calls():
    adapter, engine = make()
    for body in [{"Image": "busybox", "Env": ["A=1"]}, {"Image": "busybox"}, None, "[1, 2]"]:
        request = create_call(body)
        assert accepted(adapter, request) == request
    assert engine.calls == []


def test_the_first_create_makes_the_network_and_rewrites_the_body():
    adapter, engine = make()
    request = create_call(CLI_BODY)
    answer = accepted(adapter, request)
    assert answer.method == "POST" and answer.request == request.request
    assert json.loads(answer.body) == net.rewrite_create(CLI_BODY, IFACE)
    assert engine.created == [{
        "Name": NAME, "Driver": "bridge", "CheckDuplicate": True,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.2.1.0/24", "Gateway": "10.2.1.1"}]},
        "Labels": {"org.powerstrip.adapter": "network"},
    }]


def test_an_existing_network_is_used_as_it_is():
    adapter, engine = make()
    engine.networks.append(MINE)
    accepted(adapter, create_call(CLI_BODY))
    assert engine.created == []
    assert ("GET", "/containers/json") in engine.calls


def test_an_address_held_by_another_container_is_refused_naming_it():
    adapter, engine = make()
    engine.networks.append(MINE)
    engine.containers.append(container("db", {NAME: endpoint(asked="10.2.1.5")}, state="created",
                                       ident="d" * 64))
    message = refused(adapter, create_call(CLI_BODY))
    assert message == f"10.2.1.5 on network {NAME} is already held by container db " \
                      f"(dddddddddddd, created)"


def test_a_malformed_weave_cidr_is_refused_with_400_before_any_engine_call():
    adapter, engine = make()
    message = refused(adapter, create_call({"Env": ["WEAVE_CIDR=10.2.1/24"]}), 400)
    assert "WEAVE_CIDR='10.2.1/24'" in message
    assert engine.calls == []


@pytest.mark.parametrize(("cidr", "words"), [
    ("10.2.1.0/24", "network address"),
    ("10.2.1.255/24", "broadcast address"),
    ("10.2.1.1/24", "gateway"),
])
def test_addresses_no_container_may_hold_are_refused(cidr, words):
    adapter, engine = make()
    message = refused(adapter, create_call({"Env": [f"WEAVE_CIDR={cidr}"]}))
    assert words in message and cidr.split("/")[0] in message and NAME in message
    assert engine.created == []


def test_the_gateway_of_an_existing_network_is_its_own():
    adapter, engine = make()
    engine.networks.append(network(NAME, "10.2.1.0/24", "10.2.1.254"))
    assert "gateway" in refused(adapter, create_call({"Env": ["WEAVE_CIDR=10.2.1.254/24"]}))
    accepted(adapter, create_call({"Env": ["WEAVE_CIDR=10.2.1.1/24"]}))


def test_an_overlapping_subnet_is_refused():
    adapter, engine = make()
    message = refused(adapter, create_call({"Env": ["WEAVE_CIDR=172.17.5.5/24"]}))
    assert "overlaps network bridge with subnet 172.17.0.0/16" in message
    assert engine.created == []


def test_another_network_mode_is_refused():
    adapter, engine = make()
    body = {**CLI_BODY, "HostConfig": {"NetworkMode": "host"}}
    assert "network mode 'host'" in refused(adapter, create_call(body))
    assert engine.calls == []


def test_concurrent_creates_for_one_address_are_serialised():
    adapter, engine = make()
    hold: defer.Deferred[None] = defer.Deferred()
    engine.hold = hold
    first = pre(adapter, create_call(CLI_BODY, "one"))
    second = pre(adapter, create_call(CLI_BODY, "two"))
    # The second waits for the lock: it has not even listed the networks.
    assert engine.calls == [("GET", "/info"), ("GET", "/networks")]
    hold.callback(None)
    status, _ = fired(first)
    assert status == 200
    status, answer = fired(second)
    assert status == 409
    assert json.loads(answer)["message"] == (
        f"10.2.1.5 on network {NAME} is being taken by container one, whose create is in flight")
    assert len(engine.created) == 1


def test_the_create_post_hook_ends_the_reservation():
    adapter, engine = make()
    request = create_call(CLI_BODY, "one")
    answer = accepted(adapter, request)
    assert "in flight" in refused(adapter, create_call(CLI_BODY, "two"))
    # The daemon refused the create (an image to pull, say): the address is free again.
    created(adapter, answer, code=404)
    accepted(adapter, create_call(CLI_BODY, "two"))


def test_a_reservation_without_a_post_hook_times_out():
    clock = Clock()
    adapter, engine = make(clock=clock)
    accepted(adapter, create_call(CLI_BODY, ""))
    clock.now += 9
    assert "an unnamed container" in refused(adapter, create_call(CLI_BODY, "two"))
    clock.now += 2
    accepted(adapter, create_call(CLI_BODY, "two"))


def test_an_unreachable_engine_is_502_naming_the_step():
    adapter, engine = make()
    engine.failure = EngineError(502, "Docker Engine at unix:///x.sock unreachable: refused")
    message = refused(adapter, create_call(CLI_BODY), 502)
    assert message == (
        "reading the engine's swarm state: Docker Engine at unix:///x.sock unreachable: refused")


def test_the_lock_is_released_when_a_create_fails():
    adapter, engine = make()
    engine.failure = EngineError(500, "boom")
    refused(adapter, create_call(CLI_BODY), 500)
    engine.failure = None
    accepted(adapter, create_call(CLI_BODY))


# -- the start post-hook -----------------------------------------------------------------------


def start(adapter: Any, ident: str, code: int = 204) -> tuple[int, Any]:
    request = ClientRequest("POST", f"/v1.41/containers/{ident}/start", None)
    sent = ServerResponse(None, "", code)
    status, answer = fired(adapter.app.handle(post_hook_call(request, sent)))
    if status == 200:
        return status, parse_post_hook_answer(answer, sent)
    return status, json.loads(answer)["message"]


def test_start_logs_the_confirmed_address(caplog):
    adapter, engine = make()
    engine.inspect["web"] = _info({NAME: {"IPAddress": "10.2.1.5", "IPPrefixLen": 24}})
    with caplog.at_level(logging.INFO, logger="powerstrip.network"):
        status, answer = start(adapter, "web")
    assert (status, answer) == (200, ServerResponse(None, "", 204))
    assert f"container cccccccccccc has 10.2.1.5 on {NAME}" in caplog.messages


def test_start_with_the_wrong_address_is_loud(caplog):
    adapter, engine = make()
    engine.inspect["web"] = _info({"bridge": {"IPAddress": "172.17.0.2", "IPPrefixLen": 16}})
    with caplog.at_level(logging.INFO, logger="powerstrip.network"):
        status, message = start(adapter, "web")
    assert status == 500
    assert message.startswith("container cccccccccccc asked for 10.2.1.5 on weave-10.2.1.0-24")
    assert "has 172.17.0.2/16 on bridge" in message
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [f"ADDRESS MISMATCH: {message}"]


def test_start_of_a_container_without_weave_cidr_is_left_alone(caplog):
    adapter, engine = make()
    engine.inspect["web"] = _info({"bridge": {"IPAddress": "172.17.0.2"}}, env=["A=1"])
    with caplog.at_level(logging.INFO, logger="powerstrip.network"):
        assert start(adapter, "web") == (200, ServerResponse(None, "", 204))
    assert not [m for m in caplog.messages if "container" in m]


def test_a_failed_start_is_not_inspected():
    adapter, engine = make()
    status, _ = start(adapter, "web", code=404)
    assert status == 200
    assert engine.calls == []


def test_start_of_a_container_gone_before_inspection_only_warns(caplog):
    adapter, engine = make()
    engine.failure = EngineError(404, "No such container: web")
    with caplog.at_level(logging.INFO, logger="powerstrip.network"):
        assert start(adapter, "web") == (200, ServerResponse(None, "", 204))
    assert "cannot confirm the address of container web: No such container: web" \
        in caplog.messages


def test_start_path_names_the_container_percent_encoded():
    adapter, engine = make()
    engine.inspect["web"] = _info({NAME: {"IPAddress": "10.2.1.5", "IPPrefixLen": 24}})
    assert start(adapter, "w%65b")[0] == 200
    assert engine.calls == [("GET", "/containers/web/json")]


# -- the command line --------------------------------------------------------------------------


def test_command_line():
    args = net.argument_parser().parse_args(
        ["--listen", "127.0.0.1:0", "--docker", "unix:///run/d.sock"])
    assert (args.listen, args.docker) == ("127.0.0.1:0", "unix:///run/d.sock")
    assert net.argument_parser().parse_args(["--unix", "/x"]).docker \
        == "unix:///var/run/docker.sock"


def test_a_bad_docker_address_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        net.main(["--listen", "127.0.0.1:0", "--docker", "unix://relative"])
    assert caught.value.code == 2
    assert "absolute path" in capsys.readouterr().err


# -- on a swarm ---------------------------------------------------------------------------------

OVERLAY = "weave-10-2-1-0-24"


def test_overlay_names_are_dns_labels():
    assert net.overlay_name(IFACE.network) == OVERLAY
    assert net.overlay_name(ipaddress.IPv4Network("192.168.0.0/16")) == "weave-192-168-0-0-16"


def test_on_a_manager_the_network_is_an_attachable_overlay_network():
    adapter, engine = make()
    engine.swarm = {"LocalNodeState": "active", "ControlAvailable": True}
    answer = accepted(adapter, create_call(CLI_BODY))
    assert json.loads(answer.body) == net.rewrite_create(CLI_BODY, IFACE, OVERLAY)
    [body] = engine.created
    assert body["Name"] == OVERLAY
    assert body["Driver"] == "overlay" and body["Attachable"] is True
    assert body["IPAM"]["Config"] == [{"Subnet": "10.2.1.0/24", "Gateway": "10.2.1.1"}]


def test_a_worker_finds_the_network_on_the_manager_without_making_it_again():
    manager = FakeEngine()
    manager.networks = [BRIDGE, network(OVERLAY, "10.2.1.0/24", "10.2.1.1", driver="overlay")]
    worker = FakeEngine()
    worker.swarm = {"LocalNodeState": "active", "ControlAvailable": False}
    adapter = net.NetworkAdapter(worker, clock=Clock(), ttl=10.0, manager=manager)
    answer = accepted(adapter, create_call(CLI_BODY))
    assert json.loads(answer.body) == net.rewrite_create(CLI_BODY, IFACE, OVERLAY)
    assert worker.created == [] and manager.created == []
    # The address is still checked against the containers of this host.
    assert ("GET", "/containers/json") in worker.calls


def test_a_worker_makes_a_missing_network_on_the_manager():
    manager = FakeEngine()
    worker = FakeEngine()
    worker.swarm = {"LocalNodeState": "active", "ControlAvailable": False}
    adapter = net.NetworkAdapter(worker, clock=Clock(), ttl=10.0, manager=manager)
    accepted(adapter, create_call(CLI_BODY))
    assert worker.created == []
    [body] = manager.created
    assert body["Name"] == OVERLAY and body["Driver"] == "overlay"


def test_a_worker_without_a_manager_refuses_and_says_what_to_do():
    adapter, engine = make()
    engine.swarm = {"LocalNodeState": "active", "ControlAvailable": False}
    message = refused(adapter, create_call(CLI_BODY), 502)
    assert "swarm worker" in message and "--manager" in message
    assert engine.created == []


def test_a_local_bridge_on_the_subnet_conflicts_with_the_overlay_network():
    adapter, engine = make()
    engine.networks = [BRIDGE, network(NAME, "10.2.1.0/24", "10.2.1.1")]
    engine.swarm = {"LocalNodeState": "active", "ControlAvailable": True}
    message = refused(adapter, create_call(CLI_BODY))
    assert NAME in message and "overlaps" in message
    assert engine.created == []


# -- where reservations are kept ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_reservations_take_once_and_let_a_hold_become_given(kind, tmp_path):
    store = (net.Reservations() if kind == "memory"
             else net.open_reservations(f"sqlite:{tmp_path / 'addresses.db'}"))
    subnet = "10.2.1.0/24"
    assert fired(defer.ensureDeferred(store.take(subnet, "10.2.1.5", "held", "c1"))) is True
    assert fired(defer.ensureDeferred(store.take(subnet, "10.2.1.5", "held", "c2"))) is False
    assert fired(defer.ensureDeferred(store.get(subnet, "10.2.1.5"))) == ("held", "c1")
    # The holder's own endpoint is given the address it holds.
    assert fired(defer.ensureDeferred(store.take(subnet, "10.2.1.5", "given", "ep"))) is True
    assert fired(defer.ensureDeferred(store.take(subnet, "10.2.1.5", "given", "ep2"))) is False
    assert fired(defer.ensureDeferred(store.used(subnet))) == {"10.2.1.5"}
    fired(defer.ensureDeferred(store.drop(subnet, "10.2.1.5")))
    assert fired(defer.ensureDeferred(store.get(subnet, "10.2.1.5"))) is None


def test_two_processes_sharing_a_sqlite_file_never_take_one_address_twice(tmp_path):
    path = f"sqlite:{tmp_path / 'addresses.db'}"
    one, two = net.open_reservations(path), net.open_reservations(path)
    assert fired(defer.ensureDeferred(one.take("10.2.1.0/24", "10.2.1.9", "given", "a")))
    assert not fired(defer.ensureDeferred(two.take("10.2.1.0/24", "10.2.1.9", "given", "b")))
    assert fired(defer.ensureDeferred(two.get("10.2.1.0/24", "10.2.1.9"))) == ("given", "a")


@pytest.mark.parametrize("where", ["sqlite:", "/tmp/x.db", "redis://h:1", "file:x"])
def test_a_state_that_names_no_store_is_refused(where):
    with pytest.raises(ValueError, match="etcd://"):
        net.open_reservations(where)


def test_state_names_each_store():
    assert type(net.open_reservations(None)) is net.Reservations
    assert isinstance(net.open_reservations("etcd://127.0.0.1:2379,127.0.0.2:2379"),
                      net.EtcdReservations)


# -- overlay addresses held across hosts --------------------------------------------------------


class Engines:
    """The engines of other hosts, by address, as ``connect`` gives them."""

    def __init__(self) -> None:
        self.by_address: dict[str, FakeEngine] = {}

    def __call__(self, address: str) -> FakeEngine:
        return self.by_address[address]


def _swarm_hosts() -> tuple[Any, FakeEngine, Any, FakeEngine, Engines]:
    """Host A (manager) and host B (worker), sharing reservations, as in the demo."""
    shared = net.Reservations()
    engines = Engines()
    a_engine, b_engine = FakeEngine(), FakeEngine()
    a_engine.swarm = {"LocalNodeState": "active", "ControlAvailable": True}
    b_engine.swarm = {"LocalNodeState": "active", "ControlAvailable": False}
    engines.by_address = {"tcp://a:2375": a_engine, "tcp://b:2375": b_engine}
    a = net.NetworkAdapter(a_engine, clock=Clock(), reservations=shared, address="tcp://a:2375",
                           connect=engines)
    b = net.NetworkAdapter(b_engine, clock=Clock(), reservations=shared, manager=a_engine,
                           address="tcp://b:2375", connect=engines)
    return a, a_engine, b, b_engine, engines


def _created(adapter: Any, request: ClientRequest, ident: str) -> None:
    sent = ServerResponse("application/json", json.dumps({"Id": ident, "Warnings": []}), 201)
    status, answer = fired(adapter.app.handle(post_hook_call(request, sent)))
    assert status == 200, answer


def test_an_overlay_address_held_on_another_host_is_refused_at_once():
    a, a_engine, b, b_engine, _ = _swarm_hosts()
    request = create_call(CLI_BODY, "db")
    accepted(a, request)
    _created(a, request, "aaaaaaaaaaaa1234")
    a_engine.inspect["aaaaaaaaaaaa"] = {"Id": "aaaaaaaaaaaa1234"}
    message = refused(b, create_call(CLI_BODY, "db"))
    assert "10.2.1.5" in message and "aaaaaaaaaaaa" in message and "tcp://a:2375" in message


def test_a_hold_whose_container_is_gone_is_dropped_and_the_address_moves():
    a, a_engine, b, b_engine, _ = _swarm_hosts()
    request = create_call(CLI_BODY, "db")
    accepted(a, request)
    _created(a, request, "aaaaaaaaaaaa1234")
    # Removed on host A: its engine answers 404 for it (FakeEngine raises for unknown ids).
    a_engine.inspect.clear()
    original = a_engine._answer

    def answer(method, path, query, body):
        if path == "/containers/aaaaaaaaaaaa/json":
            raise EngineError(404, "No such container: aaaaaaaaaaaa")
        return original(method, path, query, body)

    a_engine._answer = answer
    moved = create_call(CLI_BODY, "db")
    answer_b = accepted(b, moved)
    assert json.loads(answer_b.body) == net.rewrite_create(CLI_BODY, IFACE, OVERLAY)
    _created(b, moved, "bbbbbbbbbbbb5678")
    found = fired(defer.ensureDeferred(b.ipam.reservations.get("10.2.1.0/24", "10.2.1.5")))
    assert found == ("held", "bbbbbbbbbbbb@tcp://b:2375")


def test_a_holder_whose_engine_cannot_be_asked_leaves_it_to_swarm():
    a, a_engine, b, b_engine, engines = _swarm_hosts()
    request = create_call(CLI_BODY, "db")
    accepted(a, request)
    _created(a, request, "aaaaaaaaaaaa1234")
    a_engine.failure = EngineError(502, "Docker Engine at tcp://a:2375 unreachable")
    # B's own calls go to its engine and the manager (a_engine, failing): use a reachable
    # manager for the networks and an unreachable host A for the holder.
    manager = FakeEngine()
    manager.networks = [network(OVERLAY, "10.2.1.0/24", "10.2.1.1", driver="overlay")]
    b.manager = manager
    accepted(b, create_call(CLI_BODY, "db"))

"""The network adapter end to end: ``adapters/network.py`` as a process, the real proxy in front
of the real engine, and the docker CLI.

Containers given ``WEAVE_CIDR`` get that address on the adapter's network and reach each other;
conflicts are refused with the adapter's message on the CLI's stderr; the start post-hook (on a
204 with an empty body) confirms the address in the adapter's log, or fails the start loudly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from powerstrip_dev.engine import Engine
from tests.e2e.conftest import (
    DOCKER_CLI,
    REPO,
    AdapterProcess,
    ProxyProcess,
    Scratch,
    docker,
    docker_env,
    launch_proxy,
    ok,
    short_tmpdir,
    start_adapter,
    stop_proxy,
    wait_for,
)
from tests.rawhttp import call

ADAPTER = REPO / "adapters" / "network.py"
LABEL = "org.powerstrip.adapter=network"


@dataclass
class Rig:
    """The adapter process and the proxy that calls it."""

    proxy: ProxyProcess
    adapter: AdapterProcess

    def log(self) -> str:
        """What the adapter has logged so far."""
        return self.adapter.log()


@pytest.fixture(scope="module")
def rig(engine: Engine) -> Iterator[Rig]:
    """The network adapter, talking to the engine directly, and a proxy hooking it into create
    (pre and post) and start (post)."""
    workdir = Path(short_tmpdir("ps-net-"))
    adapter = start_adapter(
        [sys.executable, str(ADAPTER), "--listen", "127.0.0.1:0", "--docker", engine.host],
        "network-adapter")
    try:
        config = workdir / "adapters.yml"
        config.write_text(
            "version: 1\n"
            "endpoints:\n"
            '  "POST /*/containers/create":\n'
            "    pre: [network]\n"
            "    post: [network]\n"
            '  "POST /*/containers/*/start":\n'
            "    post: [network]\n"
            "adapters:\n"
            f"  network: {adapter.url}\n"
        )
        proxy = launch_proxy(engine.host, config)
        try:
            yield Rig(proxy, adapter)
        finally:
            stop_proxy(proxy)
    finally:
        adapter.stop()
        # The tests' containers are gone by now (scratch); the networks the adapter made are not.
        made = ok(docker(engine.host, "network", "ls", "-q", "--filter", f"label={LABEL}"))
        if made.split():
            ok(docker(engine.host, "network", "rm", *made.decode().split()))
        shutil.rmtree(workdir, ignore_errors=True)


def inspect(host: str, kind: str, name: str) -> dict[str, Any]:
    """``docker <kind> inspect NAME`` as JSON."""
    return json.loads(ok(docker(host, kind, "inspect", name)))[0]


def refused(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """The CLI's stderr, after asserting the command failed with the adapter's refusal and every
    one of ``words`` in it."""
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, f"not refused: {result.stdout!r}"
    assert "adapter network refused" in stderr, stderr
    for word in words:
        assert word in stderr, f"{word!r} not in {stderr!r}"
    return stderr


def raw_create(proxy: ProxyProcess, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST a create body through the proxy; the status and the JSON answer."""
    answer = call(proxy.host, "POST", "/v1.41/containers/create", json.dumps(body).encode(),
                  {"Content-Type": "application/json"})
    return answer.status, answer.json()


@pytest.mark.timeout(60)
def test_containers_get_their_addresses_and_reach_each_other(engine, rig, scratch: Scratch):
    host, net = rig.proxy.host, "weave-10.2.1.0-24"
    assert docker(engine.host, "network", "inspect", net).returncode != 0
    first = scratch.name("first")
    ident = ok(docker(host, "run", "-d", "--name", first, "-e", "WEAVE_CIDR=10.2.1.5/24",
                      "busybox", "sleep", "60")).decode().strip()

    container = inspect(engine.host, "container", first)
    assert container["HostConfig"]["NetworkMode"] == net
    assert list(container["NetworkSettings"]["Networks"]) == [net]
    assert container["NetworkSettings"]["Networks"][net]["IPAddress"] == "10.2.1.5"
    assert container["NetworkSettings"]["Networks"][net]["IPPrefixLen"] == 24

    network = inspect(engine.host, "network", net)
    assert network["Driver"] == "bridge"
    assert network["Labels"] == {"org.powerstrip.adapter": "network"}
    assert [(c["Subnet"], c["Gateway"]) for c in network["IPAM"]["Config"]] == [
        ("10.2.1.0/24", "10.2.1.1")]
    assert f"created network {net} (bridge, subnet 10.2.1.0/24, gateway 10.2.1.1)" in rig.log()

    # The proxy called the start post-hook on the daemon's 204, and it saw the address.
    assert wait_for(lambda: f"container {ident[:12]} has 10.2.1.5 on {net}" in rig.log(), 5), \
        rig.log()

    second = scratch.name("second")
    pinged = ok(docker(host, "run", "--rm", "--name", second, "-e", "WEAVE_CIDR=10.2.1.6/24",
                       "busybox", "ping", "-c", "1", "-W", "2", "10.2.1.5"))
    assert b"1 packets received" in pinged


@pytest.mark.timeout(60)
def test_conflicts_are_refused_with_a_message(engine, rig, scratch: Scratch):
    host, net = rig.proxy.host, "weave-10.2.2.0-24"
    running = scratch.name("running")
    running_id = ok(docker(host, "run", "-d", "--name", running, "-e", "WEAVE_CIDR=10.2.2.5/24",
                           "busybox", "sleep", "60")).decode().strip()
    created = scratch.name("created")
    created_id = ok(docker(host, "create", "--name", created, "-e", "WEAVE_CIDR=10.2.2.7/24",
                           "busybox", "sleep", "60")).decode().strip()

    def create(cidr: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
        return docker(host, "create", "--name", scratch.name("refused"), *extra,
                      "-e", f"WEAVE_CIDR={cidr}", "busybox", "true")

    refused(create("10.2.2.5/24"), f"10.2.2.5 on network {net} is already held by container "
                                   f"{running} ({running_id[:12]}, running)")
    # Not started: the daemon would only notice at start.
    refused(create("10.2.2.7/24"), f"10.2.2.7 on network {net} is already held by container "
                                   f"{created} ({created_id[:12]}, created)")
    refused(create("10.2.2.0/24"), "10.2.2.0 is the network address of 10.2.2.0/24", net)
    refused(create("10.2.2.255/24"), "10.2.2.255 is the broadcast address of 10.2.2.0/24", net)
    refused(create("10.2.2.1/24"), f"10.2.2.1 is the gateway of network {net}")
    refused(create("10.2.2/24"), "WEAVE_CIDR='10.2.2/24' is not an IPv4 address")
    refused(create("10.2.2.8/24", "--network", "bridge"),
            f"WEAVE_CIDR=10.2.2.8/24 attaches the container to network {net} as 10.2.2.8, but "
            "the request also asks for network mode 'bridge'")

    other = scratch.name("overlap")
    ok(docker(engine.host, "network", "create", "--subnet", "10.3.0.0/16", other))
    refused(create("10.3.1.5/24"),
            f"subnet 10.3.1.0/24 (network weave-10.3.1.0-24) overlaps network {other} "
            "with subnet 10.3.0.0/16")
    assert docker(engine.host, "network", "inspect", "weave-10.3.1.0-24").returncode != 0

    # The statuses behind the messages.
    status, answer = raw_create(rig.proxy, {"Image": "busybox", "Env": ["WEAVE_CIDR=10.2.2.5/24"]})
    assert status == 409 and running in answer["message"]
    status, answer = raw_create(rig.proxy, {"Image": "busybox", "Env": ["WEAVE_CIDR=x"]})
    assert status == 400 and "WEAVE_CIDR='x'" in answer["message"]

    # Nothing refused reached the daemon.
    names = ok(docker(engine.host, "ps", "-a", "--format", "{{.Names}}")).decode().split()
    assert not [n for n in names if "-refused-" in n]


@pytest.mark.timeout(60)
def test_concurrent_creates_cannot_take_the_same_address(engine, rig, scratch: Scratch):
    names = [scratch.name("race") for _ in range(4)]
    procs = [
        subprocess.Popen(
            [DOCKER_CLI, "create", "--name", name, "-e", "WEAVE_CIDR=10.2.3.5/24", "busybox",
             "true"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=docker_env(rig.proxy.host),
        )
        for name in names
    ]
    results = [(proc.returncode, err.decode()) for proc in procs
               for _, err in [proc.communicate(timeout=30)]]
    winners = [name for name, (code, _) in zip(names, results, strict=True) if code == 0]
    assert len(winners) == 1, results
    for code, stderr in results:
        if code != 0:
            assert "10.2.3.5 on network weave-10.2.3.0-24 is" in stderr, stderr
    containers = ok(docker(engine.host, "ps", "-a", "--filter", "network=weave-10.2.3.0-24",
                           "--format", "{{.Names}}")).decode().split()
    assert containers == winners


@pytest.mark.timeout(60)
def test_a_container_without_weave_cidr_is_untouched(engine, rig, scratch: Scratch):
    proxied, direct = scratch.name("plain"), scratch.name("direct")
    ok(docker(rig.proxy.host, "create", "--name", proxied, "-e", "A=1", "busybox", "true"))
    ok(docker(engine.host, "create", "--name", direct, "-e", "A=1", "busybox", "true"))
    seen = [inspect(engine.host, "container", name) for name in (proxied, direct)]
    for key in ("HostConfig", "Config"):
        for container in seen:
            container[key].pop("Hostname", None)
        assert seen[0][key] == seen[1][key]
    assert seen[0]["HostConfig"]["NetworkMode"] == "default"
    assert seen[0]["NetworkSettings"]["Networks"] == seen[1]["NetworkSettings"]["Networks"]


@pytest.mark.timeout(60)
def test_a_start_without_the_asked_address_fails_loudly(engine, rig, scratch: Scratch):
    # Created behind the proxy's back: WEAVE_CIDR in its environment, but on the default bridge.
    name = scratch.name("bypass")
    ident = ok(docker(engine.host, "create", "--name", name, "-e", "WEAVE_CIDR=10.2.4.5/24",
                      "busybox", "sleep", "60")).decode().strip()
    result = docker(rig.proxy.host, "start", name)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0
    assert "adapter network refused post-hook" in stderr, stderr
    assert f"container {ident[:12]} asked for 10.2.4.5 on weave-10.2.4.0-24" in stderr
    assert "on bridge; it was started and is left running" in stderr
    assert inspect(engine.host, "container", name)["State"]["Running"] is True
    assert wait_for(lambda: f"ADDRESS MISMATCH: container {ident[:12]}" in rig.log(), 5), \
        rig.log()

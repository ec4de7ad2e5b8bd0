"""The policy adapter on the endpoints around a container create: Swarm, plugins, ``docker update``
and the ``endpoints`` allowlist, with the real daemon, the real docker CLI and the real proxy.

A service's tasks are containers the daemon creates itself, so no ``containers/create`` passes
the proxy for them: before the policy judged ``services/create``, ``docker service create
--mount type=bind,src=/,dst=/host`` started a container with the host's root mounted through a
policy that forbids that bind. The proxy here hooks the policy on every request (``"* *"``),
as the ``endpoints`` rule needs, with the shipped allowlist plus the Swarm and plugin endpoints,
so that the rules behind them are what refuses.

Swarm mode is entered on the session's shared engine only by the ``swarm`` fixture, which
removes every service and leaves the swarm (``docker swarm leave --force``) however the tests
end; the tests that expect the swarm refused run first, while the engine is in none.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from powerstrip.hooks import yamlfile
from powerstrip_dev.engine import Engine
from tests.e2e.conftest import (
    REPO,
    AdapterProcess,
    ProxyProcess,
    Scratch,
    docker,
    launch_proxy,
    ok,
    start_adapter,
    stop_proxy,
    unique,
    wait_for,
)
from tests.rawhttp import call

POLICY = REPO / "adapters" / "policy.py"
SHIPPED_RULES = REPO / "adapters" / "policy.yml"
#: Beyond the shipped allowlist, so that the swarm, services and plugins rules are what refuse.
EXTRA_ENDPOINTS = [
    "GET /swarm", "POST /swarm/init", "POST /swarm/join", "GET /nodes", "GET /services",
    "GET /services/*", "POST /services/create", "POST /services/*/update", "DELETE /services/*",
    "GET /tasks", "GET /plugins/privileges", "POST /plugins/pull", "POST /plugins/create",
    "POST /plugins/*/enable", "POST /plugins/*/set", "POST /plugins/*/upgrade",
]

pytestmark = pytest.mark.timeout(90)


@dataclass
class Guarded:
    """The proxy with the policy adapter hooked on every request."""

    proxy: ProxyProcess
    adapter: AdapterProcess
    engine: Engine

    @property
    def host(self) -> str:
        """The proxy's DOCKER_HOST."""
        return self.proxy.host


def shipped_endpoints() -> list[str]:
    """The allowlist of the shipped rules file, adapters/policy.yml."""
    doc = yamlfile.load(SHIPPED_RULES.read_text(), str(SHIPPED_RULES))
    return list(doc["rules"]["endpoints"]["allow"])


@pytest.fixture(scope="module")
def guarded(engine: Engine) -> Iterator[Guarded]:
    """The policy adapter with swarm and plugins forbidden, and a proxy sending it every
    request."""
    workdir = Path(tempfile.mkdtemp(prefix="ps-policy-swarm-"))
    allowed = workdir / "allowed"
    allowed.mkdir()
    rules = {
        "version": 1,
        "rules": {
            "privileged": "forbid", "host_network": "forbid", "host_pid": "forbid",
            "cap_add": {"allow": ["NET_BIND_SERVICE"]},
            "bind_mounts": {"allow": [str(allowed)]},
            "images": {"allow": ["busybox"]},
            "swarm": "forbid", "plugins": "forbid",
            "endpoints": {"allow": shipped_endpoints() + EXTRA_ENDPOINTS},
        },
    }
    rules_file = workdir / "rules.yml"
    rules_file.write_text(json.dumps(rules, indent=1))  # JSON is YAML
    adapter = start_adapter(
        [sys.executable, str(POLICY), "--listen", "127.0.0.1:0", "--rules", str(rules_file),
         "--docker", engine.host],
        "policy-adapter")
    try:
        config = workdir / "adapters.yml"
        config.write_text('version: 1\nendpoints:\n  "* *": {pre: [policy]}\n'
                          f"adapters:\n  policy: {adapter.url}\n")
        proxy = launch_proxy(engine.host, config)
        try:
            yield Guarded(proxy, adapter, engine)
        finally:
            stop_proxy(proxy)
    finally:
        log = adapter.log()
        adapter.stop()
        assert "Traceback" not in log, log
        shutil.rmtree(workdir, ignore_errors=True)


def send(host: str, method: str, target: str, body: Any = None) -> tuple[int, Any]:
    """One request to ``host``: ``body`` as JSON (text as it is); the status and the answer."""
    if body is not None and not isinstance(body, str):
        body = json.dumps(body)
    data = None if body is None else body.encode()
    if data is None and method in ("POST", "PUT"):
        data = b""
    headers = {"Content-Type": "application/json"} if data else {}
    answer = call(host, method, target, data, headers)
    try:
        return answer.status, answer.json()
    except ValueError:
        return answer.status, answer.body.decode(errors="replace")


def refused(result: Any, rule: str) -> None:
    """A docker CLI run (or a raw answer) refused by the policy rule ``rule``."""
    if isinstance(result, tuple):
        status, data = result
        assert status == 403, result
        assert f"refused by policy rule {rule}: " in data["message"], data
        return
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, stderr
    assert "Error response from daemon: " in stderr, stderr
    assert f"refused by policy rule {rule}: " in stderr, stderr


def swarm_state(engine: Engine) -> str:
    """The engine's swarm state, asked directly: ``inactive`` or ``active``."""
    return ok(docker(engine.host, "info", "--format", "{{.Swarm.LocalNodeState}}")
              ).decode().strip()


# -- swarm init and join: refused, and the engine stays out of any swarm ---------------------------


def test_swarm_init_and_join_are_refused(guarded: Guarded) -> None:
    assert swarm_state(guarded.engine) == "inactive"
    refused(docker(guarded.host, "swarm", "init", "--advertise-addr", "127.0.0.1"), "swarm")
    token = "SWMTKN-1-" + "0" * 50 + "-" + "0" * 25
    refused(docker(guarded.host, "swarm", "join", "--token", token, "127.0.0.1:2377",
                   timeout=30), "swarm")
    refused(send(guarded.host, "POST", "/v1.41/swarm/%69nit",
                 {"ListenAddr": "127.0.0.1:2377", "AdvertiseAddr": "127.0.0.1"}), "swarm")
    assert swarm_state(guarded.engine) == "inactive"


def test_the_shipped_rules_refuse_the_walk_around(engine: Engine, tmp_path: Path) -> None:
    """``make run``'s policy: the shipped rules, the adapter on every request."""
    adapter = start_adapter(
        [sys.executable, str(POLICY), "--listen", "127.0.0.1:0", "--rules", str(SHIPPED_RULES),
         "--docker", engine.host], "policy-adapter")
    try:
        config = tmp_path / "adapters.yml"
        config.write_text('version: 1\nendpoints:\n  "* *": {pre: [policy]}\n'
                          f"adapters:\n  policy: {adapter.url}\n")
        proxy = launch_proxy(engine.host, config)
        try:
            refused(docker(proxy.host, "swarm", "init", "--advertise-addr", "127.0.0.1"),
                    "endpoints")
            name = unique("svc-root")
            refused(docker(proxy.host, *CREATE, "--name", name, "--mount",
                           "type=bind,src=/,dst=/host", "busybox", "sleep", "600"), "endpoints")
            assert ok(docker(proxy.host, "run", "--rm", "busybox", "echo", "ok")) == b"ok\n"
        finally:
            stop_proxy(proxy)
    finally:
        adapter.stop()
    assert swarm_state(engine) == "inactive"


# -- plugins ---------------------------------------------------------------------------------------


PLUGIN_CONFIG = {
    "description": "a plugin asking for the host", "documentation": "-",
    "entrypoint": ["/bin/sh"],
    "interface": {"types": ["docker.volumedriver/1.0"], "socket": "p.sock"},
    "network": {"type": "host"},
    "mounts": [{"source": "/", "destination": "/host", "type": "bind", "options": ["rbind"]}],
    "linux": {"capabilities": ["CAP_SYS_ADMIN"]},
}


def test_plugins_are_refused(guarded: Guarded, tmp_path: Path) -> None:
    host, engine = guarded.host, guarded.engine
    # docker plugin install starts by asking which privileges the plugin wants.
    refused(docker(host, "plugin", "install", "--grant-all-permissions", "vieux/sshfs",
                   timeout=30), "plugins")
    (tmp_path / "rootfs").mkdir()
    # Big enough that the CLI is still sending the tar when the refusal comes: it must print
    # the refusal, not a broken pipe from a connection reset under its writes.
    (tmp_path / "rootfs" / "payload").write_bytes(os.urandom(16 << 20))
    (tmp_path / "config.json").write_text(json.dumps(PLUGIN_CONFIG))
    through, direct = unique("plugin-p"), unique("plugin-d")
    refused(docker(host, "plugin", "create", through, str(tmp_path)), "plugins")
    assert docker(engine.host, "plugin", "inspect", through).returncode != 0
    # The daemon takes such a plugin: its config asks for the host's network and root.
    ok(docker(engine.host, "plugin", "create", direct, str(tmp_path)))
    try:
        made = json.loads(ok(docker(engine.host, "plugin", "inspect", direct)))[0]
        assert made["Config"]["Network"]["Type"] == "host"
        assert made["Config"]["Mounts"][0]["Source"] == "/"
        refused(docker(host, "plugin", "enable", direct), "plugins")
        refused(docker(host, "plugin", "set", direct, "DEBUG=1"), "plugins")
        assert json.loads(ok(docker(engine.host, "plugin", "inspect", direct)))[0][
            "Enabled"] is False
    finally:
        docker(engine.host, "plugin", "rm", "-f", direct)
    refused(send(host, "POST", "/v1.41/plugins/pull?remote=vieux/sshfs", []), "plugins")
    refused(send(host, "POST", f"/v1.41/plugins/{direct}:latest/upgrade?remote=x", []),
            "plugins")


# -- docker update ---------------------------------------------------------------------------------


def test_docker_update(guarded: Guarded, scratch: Scratch) -> None:
    host, engine = guarded.host, guarded.engine
    name = scratch.name("update")
    ok(docker(host, "run", "-d", "--name", name, "busybox", "sleep", "300"))
    ok(docker(host, "update", "--memory", "64m", "--memory-swap", "128m",
              "--restart", "on-failure:3", name))
    info = json.loads(ok(docker(engine.host, "inspect", name)))[0]["HostConfig"]
    assert info["Memory"] == 64 * 2**20 and info["RestartPolicy"]["Name"] == "on-failure"
    # dockerd reads only resources and the restart policy from an update: these change nothing
    # when sent direct, and the policy refuses them rather than trust that they never will.
    forbidden = {"Privileged": True, "CapAdd": ["ALL"], "NetworkMode": "host",
                 "HostConfig": {"Privileged": True, "Binds": ["/:/host"]}}
    status, _ = send(engine.host, "POST", f"/v1.41/containers/{name}/update", forbidden)
    assert status == 200
    info = json.loads(ok(docker(engine.host, "inspect", name)))[0]["HostConfig"]
    assert info["Privileged"] is False and not info["CapAdd"] and not info["Binds"]
    refused(send(host, "POST", f"/v1.41/containers/{name}/update", forbidden), "privileged")


# -- the endpoints allowlist -----------------------------------------------------------------------


def test_endpoints_off_the_allowlist_are_refused(guarded: Guarded) -> None:
    host = guarded.host
    refused(docker(host, "secret", "ls"), "endpoints")
    refused(docker(host, "config", "ls"), "endpoints")
    refused(send(host, "GET", "/v1.41%2Fsecrets"), "endpoints")
    refused(send(host, "POST", "/v1.41/swarm/leave?force=1"), "endpoints")
    refused(send(host, "PUT", "/v1.42/volumes/x?version=1", {}), "endpoints")
    # What the list holds passes, in any spelling dockerd routes.
    assert send(host, "GET", "/v1.041%2F%63ontainers/json")[0] == 200
    assert ok(docker(host, "version", "--format", "{{.Server.APIVersion}}")).strip()


# -- swarm services --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swarm(guarded: Guarded) -> Iterator[Engine]:
    """The shared engine as a one-node swarm, initialised directly (the policy refuses it), for
    this module's service tests; every service removed and the swarm left however they end."""
    engine = guarded.engine
    had_gwbridge = docker(engine.host, "network", "inspect", "docker_gwbridge").returncode == 0
    try:
        ok(docker(engine.host, "swarm", "init", "--advertise-addr", "127.0.0.1", timeout=60))
        yield engine
    finally:
        services = ok(docker(engine.host, "service", "ls", "-q")).split()
        if services:
            docker(engine.host, "service", "rm", *(s.decode() for s in services))
        docker(engine.host, "swarm", "leave", "--force", timeout=60)
        # A service's task containers go with the swarm; wait for them so that no later test
        # sees one.
        wait_for(lambda: not ok(docker(engine.host, "ps", "-aq", "--filter",
                                       "label=com.docker.swarm.service.id")).strip(), 30)
        # Swarm mode made this bridge (and a subnet with it); the engine had none before.
        if not had_gwbridge:
            docker(engine.host, "network", "rm", "docker_gwbridge")
        assert swarm_state(engine) == "inactive"
        assert had_gwbridge or docker(engine.host, "network", "inspect",
                                      "docker_gwbridge").returncode != 0


def service_containers(engine: Engine, service: str) -> list[dict[str, Any]]:
    """The containers the daemon made for ``service``'s tasks, inspected."""
    ids = ok(docker(engine.host, "ps", "-aq", "--filter",
                    f"label=com.docker.swarm.service.name={service}")).split()
    if not ids:
        return []
    return json.loads(ok(docker(engine.host, "inspect", *(i.decode() for i in ids))))


def service_exists(engine: Engine, service: str) -> bool:
    """Whether the swarm has a service of that name."""
    return docker(engine.host, "service", "inspect", service).returncode == 0


CREATE = ["service", "create", "--detach", "--no-resolve-image"]


@pytest.mark.timeout(120)
def test_a_service_with_the_hosts_root_mounted(guarded: Guarded, swarm: Engine) -> None:
    # Direct, the daemon starts the task's container with / of the host at /host.
    direct = unique("svc-root")
    ok(docker(swarm.host, *CREATE, "--name", direct, "--mount", "type=bind,src=/,dst=/host",
              "busybox", "sleep", "600"))
    try:
        assert wait_for(lambda: service_containers(swarm, direct), 60), "no task container"
        mounts = service_containers(swarm, direct)[0]["Mounts"]
        assert {"Source": "/", "Destination": "/host"}.items() <= mounts[0].items(), mounts
    finally:
        ok(docker(swarm.host, "service", "rm", direct))
    # Through the proxy, the policy refuses it and nothing is made.
    name = unique("svc-root")
    refused(docker(guarded.host, *CREATE, "--name", name, "--mount",
                   "type=bind,src=/,dst=/host", "busybox", "sleep", "600"), "bind_mounts")
    assert not service_exists(swarm, name)
    assert not service_containers(swarm, name)


@pytest.mark.parametrize(("flags", "rule"), [
    (["--cap-add", "SYS_ADMIN"], "cap_add"),
    (["--cap-add", "all"], "cap_add"),
    (["--network", "host"], "host_network"),
    (["--mount", "type=bind,src=/etc,dst=/h,readonly"], "bind_mounts"),
    (["--mount", "type=volume,src=v,dst=/v,volume-opt=type=none,volume-opt=o=bind,"
                 "volume-opt=device=/etc"], "bind_mounts"),
])
def test_service_create_is_judged_like_a_container(
    guarded: Guarded, swarm: Engine, flags: list[str], rule: str
) -> None:
    name = unique("svc")
    refused(docker(guarded.host, *CREATE, "--name", name, *flags, "busybox", "sleep", "600"),
            rule)
    assert not service_exists(swarm, name)


def test_a_service_image_off_the_allowlist(guarded: Guarded, swarm: Engine,
                                           scratch: Scratch) -> None:
    other = scratch.name("other")
    ok(docker(swarm.host, "tag", "busybox:latest", other))
    name = unique("svc")
    refused(docker(guarded.host, *CREATE, "--name", name, other, "sleep", "600"), "images")
    assert not service_exists(swarm, name)


@pytest.mark.timeout(120)
def test_service_update_is_judged(guarded: Guarded, swarm: Engine) -> None:
    host = guarded.host
    name, network = unique("svc-update"), unique("overlay")
    # A network of its own, which the CLI sends by ID (and every update sends again): the
    # policy looks it up and lets it through.
    ok(docker(host, "network", "create", "--driver", "overlay", network))
    ok(docker(host, *CREATE, "--name", name, "--network", network, "--endpoint-mode", "dnsrr",
              "busybox", "sleep", "600"))
    before = json.loads(ok(docker(swarm.host, "service", "inspect", name)))[0]
    update = ["service", "update", "--detach", "--no-resolve-image"]
    for flags, rule in [
        (["--mount-add", "type=bind,src=/,dst=/host"], "bind_mounts"),
        (["--cap-add", "CAP_SYS_ADMIN"], "cap_add"),
        (["--network-add", "host"], "host_network"),
        (["--image", "alpine"], "images"),
    ]:
        refused(docker(host, *update, *flags, name), rule)
    after = json.loads(ok(docker(swarm.host, "service", "inspect", name)))[0]
    assert after["Version"] == before["Version"]
    assert after["Spec"] == before["Spec"]
    # What the rules allow passes.
    ok(docker(host, *update, "--env-add", "SEEN=1", "--cap-add", "NET_BIND_SERVICE", name))
    spec = json.loads(ok(docker(swarm.host, "service", "inspect", name)))[0]["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert len(spec["TaskTemplate"]["Networks"]) == 1
    assert container["Env"] == ["SEEN=1"]
    assert container["CapabilityAdd"] == ["CAP_NET_BIND_SERVICE"]


@pytest.mark.parametrize(("body", "rule"), [
    # Keys in another case, as Go's decoder matches them.
    ({"name": "x", "taskTemplate": {"containerSpec": {"image": "busybox", "mounts": [
        {"type": "bind", "source": "/etc", "target": "/h"}]}}}, "bind_mounts"),
    # The deprecated top-level Networks, which the daemon still reads.
    ({"Name": "x", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}},
      "Networks": [{"Target": "host"}]}, "host_network"),
    # A second TaskTemplate is decoded into the first: the image stays, the mount is added.
    ('{"Name":"x","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}},"TaskTemplate":'
     '{"ContainerSpec":{"Mounts":[{"Type":"bind","Source":"/etc","Target":"/h"}]}}}',
     "bind_mounts"),
    # A task that installs a plugin.
    ({"Name": "x", "TaskTemplate": {"Runtime": "plugin",
                                    "PluginSpec": {"Name": "p", "Remote": "vieux/sshfs"}}},
     "plugins"),
])
def test_service_bodies_as_the_daemon_reads_them(
    guarded: Guarded, swarm: Engine, body: Any, rule: str
) -> None:
    name = unique("svc-raw")
    if isinstance(body, str):
        body = body.replace('"x"', json.dumps(name))
    else:
        body = json.loads(json.dumps(body).replace('"x"', json.dumps(name)))
    refused(send(guarded.host, "POST", "/v1.41/services/create", body), rule)
    assert not service_exists(swarm, name)

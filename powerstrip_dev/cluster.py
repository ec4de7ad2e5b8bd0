"""``powerstrip demo``: the demo at cluster size, on hosts that share only a network.

Three network namespaces on one bridge (``powerstrip_dev.fabric``) play three machines: hosts A
and B, each with its own Docker Engine, Powerstrip, example adapters and run directory, and a
third running etcd, where the volumes and network adapters of both hosts keep their state. No
file, socket or database is shared between hosts: a dataset moves by host B's volumes adapter
pulling it from host A's engine over the network. Every docker and docker-compose command runs
on its host, through that host's Powerstrip. The story:

1. Swarm: host A initialises a swarm and host B joins it, both through Powerstrip, whose policy
   (the shipped rules, with swarm mode allowed) still refuses a service that binds the host's
   root.
2. Compose: the demo's application (``COMPOSE_FILE`` below) is brought up on host A: ``db``
   writes into dataset ``db`` and serves it at ``WEAVE_CIDR`` 10.2.1.5, on an attachable
   overlay network the network adapter makes. ``client`` on host B reaches it at that address.
   Then ``db`` is brought down on A and up on B: it finds its data (moved from A) and its
   address, and ``client``, now on host A, still reaches it there.
3. A Swarm service with a ``powerstrip-volumes`` volume (the volumes adapter as a Docker volume
   plugin), pinned to host A by a node label, writes its data; moving the constraint to host B
   reschedules its task there, which reads the same data, moved.
4. What the state in etcd says, and what the adapters logged.

Every step is checked; the command exits 1 at the first that does not hold, and stops
everything it started either way.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from powerstrip_dev import engine, rig
from powerstrip_dev.etcd import EtcdError, EtcdServer
from powerstrip_dev.fabric import Fabric, FabricError, FabricHost
from powerstrip_dev.processes import (
    ProxyService,
    Service,
    ServiceError,
    python,
    start_proxy,
    start_service,
)

#: The engines' API on the fabric, for the other host's volumes and network adapters.
ENGINE_PORT = 2375
DB_ADDRESS = "10.2.1.5"
CLIENT_ADDRESS = "10.2.1.6"
PREFIXLEN = 24
OVERLAY = "weave-10-2-1-0-24"
VOLUME_PLUGIN = "powerstrip-volumes"
NODE_LABEL = "powerstrip.host"
PROJECT = "demo"

#: The demo's application. ``network_mode: default`` leaves the network to the network
#: adapter: compose would otherwise put each container on a project network of its own
#: choosing, which WEAVE_CIDR's network replaces only when nothing else is asked for.
COMPOSE_FILE = f"""\
version: "2.4"
services:
  db:
    image: busybox
    network_mode: default
    environment:
      WEAVE_CIDR: {DB_ADDRESS}/{PREFIXLEN}
      DEMO_HOST: ${{DEMO_HOST:-?}}
    volumes:
      - /flocker/db:/data
    command:
      - sh
      - -c
      - '[ -f /data/hello ] || echo "written on host $$DEMO_HOST" > /data/hello;
         exec httpd -f -p 80 -h /data'
  client:
    image: busybox
    network_mode: default
    environment:
      WEAVE_CIDR: {CLIENT_ADDRESS}/{PREFIXLEN}
    command:
      - sh
      - -c
      - 'printf "GET /hello HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {DB_ADDRESS} 80'
"""

#: Endpoints the demo's policy adds to the shipped allowlist: swarm mode for the demo's
#: commands (init, join, node labels, services and their tasks).
SWARM_ENDPOINTS = (
    "GET /swarm", "POST /swarm/init", "POST /swarm/join", "POST /swarm/leave",
    "GET /nodes", "GET /nodes/*", "POST /nodes/*/update",
    "GET /services", "POST /services/create", "GET /services/*", "POST /services/*/update",
    "DELETE /services/*", "GET /services/*/logs", "GET /tasks", "GET /tasks/*",
)


class StepFailed(Exception):
    """A step of the story did not hold; the message says what was expected and what came."""


def say(text: str = "") -> None:
    """Narrate, on standard output."""
    print(text, flush=True)


def expect(condition: bool, what: str) -> None:
    """Fail the step unless ``condition``."""
    if not condition:
        raise StepFailed(what)
    say(f"  ✓ {what}")


@dataclass
class Host:
    """One host: its place on the fabric, its engine, adapters and Powerstrip."""

    name: str
    net: FabricHost
    home: Path
    engine: engine.Engine
    services: dict[str, Service] = field(default_factory=dict)
    proxy: ProxyService | None = None

    @property
    def engine_address(self) -> str:
        """Its engine's API as the other hosts reach it."""
        return f"tcp://{self.net.address}:{ENGINE_PORT}"

    @property
    def docker_host(self) -> str:
        """DOCKER_HOST for clients on this host: its Powerstrip."""
        assert self.proxy is not None
        return self.proxy.docker_host


def demo_policy(path: Path) -> None:
    """The shipped policy rules with swarm mode allowed and its endpoints listed, at ``path``."""
    rules = yaml.safe_load((rig.ADAPTERS / "policy.yml").read_text())
    rules["rules"]["swarm"] = "allow"
    allowed = rules["rules"]["endpoints"]["allow"]
    allowed.extend(e for e in SWARM_ENDPOINTS if e not in allowed)
    path.write_text("# The demo's policy: adapters/policy.yml with swarm mode allowed.\n"
                    + yaml.safe_dump(rules, sort_keys=False))


class Cluster:
    """The fabric, etcd and the hosts; ``stop`` stops whatever of it was started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.fabric = Fabric()
        self.etcd: EtcdServer | None = None
        self.hosts: dict[str, Host] = {}

    @property
    def etcd_url(self) -> str:
        """How the adapters name the store."""
        assert self.etcd is not None
        return self.etcd.url

    def start(self) -> None:
        """Make the network, start etcd, then both hosts' engines (side by side), adapters and
        Powerstrips."""
        self.fabric.open()
        say(f"- the network: bridge {self.fabric.subnet}, with hosts that reach each other "
            "only over it")
        store = self.fabric.add_host("etcd")
        self.etcd = EtcdServer(self.workdir / "etcd", host=store.address, netns=store.netns)
        self.etcd.start()
        say(f"- etcd: {self.etcd.url} on its own host")
        for name in ("A", "B"):
            net = self.fabric.add_host(name.lower())
            home = self.workdir / name.lower()
            eng = engine.Engine(
                home / "engine", netns=net.netns, hostname=name, plugin_dir=home / "plugins",
                # Plain TCP on the demo's own bridge: the other host's adapters reach this
                # engine there. --tls=false says so, which also spares dockerd's 15 s warning
                # pause; docs/cluster.md says how to keep that port private on real machines.
                args=["--host", f"tcp://{net.address}:{ENGINE_PORT}", "--tls=false"])
            self.hosts[name] = Host(name, net, home, eng)
        errors: list[BaseException] = []

        def start_engine(host: Host) -> None:
            try:
                host.engine.start()
                host.engine.ensure_image()
            except BaseException as exc:  # reported below, in this thread
                errors.append(exc)

        threads = [threading.Thread(target=start_engine, args=(h,)) for h in self.hosts.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        policy = self.workdir / "policy.yml"
        demo_policy(policy)
        for host in self.hosts.values():
            self._start_host(host, policy)

    def _start_host(self, host: Host, policy: Path) -> None:
        prefix = f"{host.name.lower()}-"
        # Each host's logs in its own run directory, like the rest of what it writes.
        logdir = host.home / "logs"
        wrap = host.net.command([])
        listen = "127.0.0.1:0"
        argv = {
            "debug": python(str(rig.ADAPTERS / "debug.py"), "--listen", listen,
                            "--output", str(rig.debug_log(logdir, prefix))),
            "volumes": python(str(rig.ADAPTERS / "volumes.py"), "--listen", listen,
                              "--host-name", host.name, "--docker", host.engine_address,
                              "--state", self.etcd_url, "--plugin", VOLUME_PLUGIN,
                              "--plugin-dir", str(host.home / "plugins")),
            "network": python(str(rig.ADAPTERS / "network.py"), "--listen", listen,
                              "--docker", host.engine_address, "--state", self.etcd_url),
            "policy": python(str(rig.ADAPTERS / "policy.py"), "--listen", listen,
                             "--rules", str(policy), "--docker", host.engine_address),
        }
        manager = self.hosts["A"]
        if host is not manager:
            argv["network"] += ["--manager", manager.engine_address]
        for name, command in argv.items():
            host.services[name] = start_service(prefix + name, command, logdir, wrap=wrap)
        config = host.home / "adapters.yml"
        config.write_text(rig.chain_config({n: s.url for n, s in host.services.items()}))
        host.proxy = start_proxy(host.engine.host, config=config, logdir=logdir,
                                 listen=f"unix://{host.home}/powerstrip.sock",
                                 name=f"{prefix}powerstrip", wrap=wrap)
        say(f"- host {host.name}: {host.net.address}, engine {host.engine_address}, "
            f"Powerstrip {host.docker_host}, adapters {', '.join(host.services)}")

    def stop(self) -> None:
        """Stop everything started, each host's engine after its Powerstrip and adapters, the
        network last."""
        for host in reversed(list(self.hosts.values())):
            if host.proxy is not None:
                host.proxy.stop()
            rig.stop_all(host.services.values())
        for host in reversed(list(self.hosts.values())):
            if host.engine.pid() is not None:
                # Straight to the engine: leaving the swarm first keeps its shutdown short.
                subprocess.run(["docker", "-H", host.engine.host, "swarm", "leave", "--force"],
                               capture_output=True, timeout=60, env=_docker_env(None))
            try:
                host.engine.stop(remove=True)
            except engine.ThrowawayEngineError as exc:
                say(f"  (host {host.name}: {exc})")
        if self.etcd is not None:
            self.etcd.stop()
        self.fabric.close()

    def dataset_owner(self, name: str) -> str | None:
        """Who etcd says owns dataset ``name``, read from its JSON gateway."""
        assert self.etcd is not None
        key = base64.b64encode(f"/powerstrip/volumes/datasets/{name}".encode()).decode()
        request = urllib.request.Request(self.etcd.http + "/v3/kv/range",
                                         data=json.dumps({"key": key}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            kvs = json.load(answer).get("kvs") or []
        if not kvs:
            return None
        return json.loads(base64.b64decode(kvs[0]["value"]))["host"]


def _docker_env(host: Host | None, config: str | None = None) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    if host is not None:
        env["DOCKER_HOST"] = host.docker_host
    if config is not None:
        env["DOCKER_CONFIG"] = config
    return env


def _shown(args: Sequence[str]) -> str:
    return " ".join(a if re.fullmatch(r"[\w./:=@%+,{}-]+", a) else repr(a) for a in args)


def on(host: Host, *args: str, timeout: float = 120, env: dict[str, str] | None = None,
       quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``args`` (``docker ...`` or ``docker-compose ...``) on ``host``, with DOCKER_HOST
    its Powerstrip, showing the command and its output."""
    if not quiet:
        say(f"  [{host.name}] $ {_shown(args)}")
    with tempfile.TemporaryDirectory(prefix="ps-cluster-cfg-") as config:
        result = subprocess.run(
            host.net.command(args), capture_output=True, text=True, timeout=timeout,
            env={**_docker_env(host, config), **(env or {})}, stdin=subprocess.DEVNULL,
            cwd=host.home)
    if not quiet:
        for line in (result.stdout + result.stderr).splitlines():
            say(f"      {line}")
    return result


def wait_for(what: str, check: object, timeout: float = 60.0, every: float = 1.0) -> str:
    """Poll ``check()`` (a callable giving a truthy string when done) until it holds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()  # type: ignore[operator]
        if found:
            return found
        if time.monotonic() > deadline:
            raise StepFailed(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def compose(host: Host, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``docker-compose -p demo ARGS`` with the demo's compose file, on ``host``."""
    (host.home / "docker-compose.yml").write_text(COMPOSE_FILE)
    return on(host, "docker-compose", "-p", PROJECT, *args,
              env={"DEMO_HOST": host.name}, **kwargs)  # type: ignore[arg-type]


def swarm_step(a: Host, b: Host) -> None:
    """Step 1: a swarm of A (manager) and B (worker), made through Powerstrip."""
    say()
    say("1. Swarm: host A initialises a swarm, host B joins it, both through Powerstrip")
    result = on(a, "docker", "swarm", "init", "--advertise-addr", a.net.address)
    expect(result.returncode == 0, "host A is a swarm manager (the demo's policy allows swarm)")
    token = on(a, "docker", "swarm", "join-token", "-q", "worker", quiet=True).stdout.strip()
    result = on(b, "docker", "swarm", "join", "--token", token, f"{a.net.address}:2377")
    expect(result.returncode == 0, "host B joined it as a worker")
    for host in (a, b):
        result = on(a, "docker", "node", "update", "--label-add", f"{NODE_LABEL}={host.name}",
                    host.name)
        expect(result.returncode == 0, f"node {host.name} is labelled {NODE_LABEL}={host.name}")
    result = on(a, "docker", "node", "ls", "--format", "{{.Hostname}} {{.Status}}")
    expect(sorted(result.stdout.split()) == ["A", "B", "Ready", "Ready"],
           "both nodes are Ready")
    result = on(a, "docker", "service", "create", "--detach", "--no-resolve-image",
                "--mount", "type=bind,src=/,dst=/host", "busybox", "sleep", "600")
    expect(result.returncode != 0 and "policy" in result.stderr.lower(),
           "the policy holds on services: one that binds the host's root is refused")


def _fetch(host: Host) -> subprocess.CompletedProcess[str]:
    return compose(host, "run", "--rm", "client")


def compose_step(a: Host, b: Host, cluster: Cluster) -> None:
    """Step 2: the compose app on A, reached from B; then moved to B, reached from A."""
    say()
    say(f"2. Compose: db (dataset db, {DB_ADDRESS}) up on host A, reached from host B")
    result = compose(a, "up", "-d", "db")
    expect(result.returncode == 0, "db is up on host A")
    result = compose(b, "run", "--rm", "client")
    expect("written on host A" in result.stdout,
           f"client on host B reached db on host A at {DB_ADDRESS} over the overlay network")
    result = compose(a, "down")
    expect(result.returncode == 0, "db is down on host A")
    say()
    say("   ... and db up on host B: its data and its address follow it")
    result = compose(b, "up", "-d", "db")
    expect(result.returncode == 0, "db is up on host B")
    result = compose(b, "exec", "-T", "db", "sh", "-c",
                     "cat /data/hello; ip -4 -o addr show eth0")
    expect("written on host A" in result.stdout,
           "db on host B found the data written on host A: the dataset moved over the network")
    expect(f"inet {DB_ADDRESS}/{PREFIXLEN}" in result.stdout,
           f"db has its address {DB_ADDRESS} on host B")
    result = compose(a, "run", "--rm", "client")
    expect("written on host A" in result.stdout,
           "client, now on host A, reaches db on host B at the same address")
    result = on(a, "docker", "run", "--rm", "-e", f"WEAVE_CIDR={DB_ADDRESS}/{PREFIXLEN}",
                "busybox", "true")
    expect(result.returncode != 0 and "already held" in result.stderr,
           f"network (host A): {DB_ADDRESS}, held by db on host B, is refused on host A")
    expect(cluster.dataset_owner("db") == "B", "etcd says host B owns dataset db")
    result = compose(b, "down")
    expect(result.returncode == 0, "db is down on host B")


def _task_container(host: Host, service: str) -> str:
    result = on(host, "docker", "ps", "-q", "--filter",
                f"label=com.docker.swarm.service.name={service}", quiet=True)
    return result.stdout.strip().split("\n")[0] if result.stdout.strip() else ""


def service_step(a: Host, b: Host, cluster: Cluster) -> None:
    """Step 3: a service's powerstrip-volumes volume follows its task from A to B."""
    say()
    say(f"3. Swarm service: a {VOLUME_PLUGIN} volume follows its task from host A to host B")
    result = on(
        a, "docker", "service", "create", "--detach", "--no-resolve-image", "--name", "store",
        "--endpoint-mode", "dnsrr", "--hostname", "{{.Node.Hostname}}",
        "--constraint", f"node.labels.{NODE_LABEL}==A",
        "--mount", f"type=volume,source=store,destination=/data,volume-driver={VOLUME_PLUGIN}",
        "busybox", "sh", "-c",
        '[ -f /data/hello ] || echo "written by the task on host $(hostname)" > /data/hello; '
        "exec sleep 3600")
    expect(result.returncode == 0, "service store is created on the manager, through Powerstrip")
    task = wait_for("the task on host A", lambda: _task_container(a, "store"), timeout=90)
    result = on(a, "docker", "exec", task, "cat", "/data/hello")
    expect("written by the task on host A" in result.stdout,
           "its task runs on host A and has written its data")
    result = on(a, "docker", "service", "update", "--detach", "--no-resolve-image",
                "--constraint-rm", f"node.labels.{NODE_LABEL}==A",
                "--constraint-add", f"node.labels.{NODE_LABEL}==B", "store")
    expect(result.returncode == 0, "its constraint moved to host B")
    task = wait_for("the task on host B", lambda: _task_container(b, "store"), timeout=90)
    result = on(b, "docker", "exec", task, "cat", "/data/hello")
    expect("written by the task on host A" in result.stdout,
           "its task runs on host B and reads the data written on host A: the volume moved")
    expect(cluster.dataset_owner("store") == "B", "etcd says host B owns dataset store")
    result = on(a, "docker", "service", "rm", "store")
    expect(result.returncode == 0, "the service is removed")


def adapters_step(a: Host, b: Host) -> None:
    """Step 4: what the adapters logged."""
    say()
    say("4. What the adapters did")
    volumes_log = b.services["volumes"].log()
    for name in ("db", "store"):
        moved = f"dataset {name}: moved from host A to host B"
        expect(moved in volumes_log, f"volumes (host B): {moved}")
    network_log = b.services["network"].log()
    confirmed = f"has {DB_ADDRESS} on {OVERLAY}"
    expect(confirmed in network_log,
           f"network (host B): the start post-hook confirmed {DB_ADDRESS} on {OVERLAY}")
    made = f"created network {OVERLAY} (overlay"
    expect(made in a.services["network"].log(),
           f"network (host A): it made {OVERLAY} an overlay network")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cluster demo; 0 when every step held."""
    parser = argparse.ArgumentParser(prog="powerstrip demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (logs, state) afterwards")
    args = parser.parse_args(argv)
    engine.ensure_packages()
    for tool in ("docker", "docker-compose", "etcd", "ip", "nsenter"):
        if shutil.which(tool, path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin") is None:
            say(f"powerstrip demo: {tool} is not installed (scripts/bootstrap installs it)")
            return 1
    # Short: the engines' and proxies' unix sockets live under it.
    workdir = Path(tempfile.mkdtemp(prefix="ps-cl-", dir="/tmp"))
    started = time.monotonic()
    say(f"Powerstrip demo: hosts that share only a network (working directory {workdir})")
    cluster = Cluster(workdir)
    try:
        cluster.start()
        a, b = cluster.hosts["A"], cluster.hosts["B"]
        swarm_step(a, b)
        compose_step(a, b, cluster)
        service_step(a, b, cluster)
        adapters_step(a, b)
    except (StepFailed, ServiceError, engine.ThrowawayEngineError, EtcdError, FabricError,
            subprocess.TimeoutExpired, OSError) as exc:
        say(f"  ✗ {exc}")
        say(f"demo FAILED; logs in {workdir}/a/logs and {workdir}/b/logs")
        args.keep = True
        return 1
    finally:
        say("- stopping everything the demo started")
        cluster.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    say()
    say(f"demo passed in {time.monotonic() - started:.0f} s: data, addresses and a service's "
        "volume followed their containers from host A to host B")
    return 0


if __name__ == "__main__":
    sys.exit(main())

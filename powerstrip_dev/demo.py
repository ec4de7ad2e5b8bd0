"""``powerstrip demo --local``: a container and its data moving between two engines on one machine.

``powerstrip demo`` without ``--local`` runs the story at cluster size (``powerstrip_dev.cluster``):
hosts that share only a network, Swarm and Compose, state in etcd. The local story is the short
one, with nothing but two engines:

Two throwaway Docker Engines play host A and host B, each with its own Powerstrip and its own
example adapters (volumes and network, with debug and policy in the chain); the volumes adapters
share one state file, their control service. The story:

1. On host A, a container with ``-v /flocker/db:/data`` and ``WEAVE_CIDR=10.2.1.5/24`` writes a
   file into dataset ``db``, at that address. It is removed.
2. On host B, the very same ``docker run`` reads the file back: the data followed the container.
   It has its address on host B too.
3. What each adapter did: the debug adapter's diffs, the volumes adapter's move, the network
   adapter's confirmation, and a refusal by the policy adapter.

Every step is checked; the command exits 1 at the first one that does not hold.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from powerstrip_dev import engine, rig
from powerstrip_dev.processes import ProxyService, Service, ServiceError, start_proxy

DATASET = "db"
ADDRESS = "10.2.1.5"
CIDR = f"{ADDRESS}/24"
MESSAGE = "written on host A"


class StepFailed(Exception):
    """A step of the story did not hold; the message says what was expected and what came."""


@dataclass
class Host:
    """One host of the demo: its engine, its adapters and its Powerstrip."""

    name: str
    engine: engine.Engine
    logdir: Path
    adapters: dict[str, Service] = field(default_factory=dict)
    proxy: ProxyService | None = None

    @property
    def docker_host(self) -> str:
        """The DOCKER_HOST of this host's Powerstrip."""
        assert self.proxy is not None
        return self.proxy.docker_host


def say(text: str = "") -> None:
    """Narrate, on standard output."""
    print(text, flush=True)


def docker_cli() -> str:
    """The docker CLI to run the story with."""
    found = shutil.which("docker")
    if found is None:
        raise StepFailed("no docker CLI on PATH")
    return found


def run_docker(host: Host, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI against host's Powerstrip, showing the command and its output."""
    shown = " ".join(a if re.fullmatch(r"[\w./:=@%+-]+", a) else repr(a) for a in args)
    say(f"  [{host.name}] $ docker {shown}")
    with tempfile.TemporaryDirectory(prefix="ps-demo-cfg-") as config:
        env = {"DOCKER_HOST": host.docker_host, "DOCKER_CONFIG": config,
               "PATH": "/usr/local/bin:/usr/bin:/bin"}
        result = subprocess.run([docker_cli(), *args], capture_output=True, text=True,
                                timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    for line in (result.stdout + result.stderr).splitlines():
        say(f"      {line}")
    return result


def expect(condition: bool, what: str) -> None:
    """Fail the step unless ``condition``."""
    if not condition:
        raise StepFailed(what)
    say(f"  ✓ {what}")


def start_host(name: str, workdir: Path, state: Path) -> Host:
    """Start host ``name``: engine, adapters, Powerstrip."""
    say(f"- host {name}: starting a Docker Engine, the adapters and Powerstrip")
    eng = engine.Engine(workdir / name.lower())
    logdir = workdir / "logs"
    host = Host(name, eng, logdir)
    eng.start()
    eng.ensure_image()
    host.adapters = rig.start_adapters(eng.host, logdir, state, name, prefix=f"{name.lower()}-")
    config = workdir / f"{name.lower()}-adapters.yml"
    config.write_text(rig.chain_config({n: s.url for n, s in host.adapters.items()}))
    host.proxy = start_proxy(eng.host, config=config, logdir=logdir,
                             name=f"{name.lower()}-powerstrip")
    say(f"  host {name}: engine {eng.host}, Powerstrip {host.docker_host}")
    return host


def stop_host(host: Host) -> None:
    """Stop everything of ``host``, its engine last."""
    if host.proxy is not None:
        host.proxy.stop()
    rig.stop_all(host.adapters.values())
    host.engine.stop(remove=True)


def story(a: Host, b: Host, state: Path) -> None:
    """The steps; raises StepFailed at the first that does not hold."""
    run_args = ["run", "--rm", "-e", f"WEAVE_CIDR={CIDR}", "-v", f"/flocker/{DATASET}:/data",
                "busybox", "sh", "-c"]
    say()
    say(f"1. Host A: write into dataset {DATASET!r}, at {ADDRESS}")
    result = run_docker(a, *run_args,
                        f"echo '{MESSAGE}' > /data/hello && ip -4 -o addr show eth0")
    expect(result.returncode == 0, "the container ran on host A")
    expect(f"inet {CIDR}" in result.stdout, f"it had the address {CIDR} on host A")

    say()
    say(f"2. Host B: the same docker run reads dataset {DATASET!r}")
    # A second's sleep lets the network adapter's start post-hook see the container running.
    result = run_docker(b, *run_args, "cat /data/hello && ip -4 -o addr show eth0 && sleep 1")
    expect(result.returncode == 0, "the container ran on host B")
    expect(MESSAGE in result.stdout, "it read the file written on host A: the data followed")
    expect(f"inet {CIDR}" in result.stdout, f"it had the address {CIDR} on host B")

    say()
    say("3. What each adapter did")
    debug_path = rig.debug_log(b.logdir, f"{b.name.lower()}-")
    debug_log = debug_path.read_text(errors="replace") if debug_path.exists() else ""
    # The chain is debug, volumes, debug, network, debug: the diff printed with the debug
    # adapter's second call is the volumes adapter's change, with its third the network's.
    by_volumes, by_network = _diff(debug_log, 1), _diff(debug_log, 2)
    expect(any(f"flocker-{DATASET}" in line for line in by_volumes),
           f"debug (host B): the volumes adapter rewrote /flocker/{DATASET} into a volume")
    for line in by_volumes:
        say(f"      {line}")
    expect(any(f'"IPv4Address": "{ADDRESS}"' in line for line in by_network),
           f"debug (host B): the network adapter set the address {ADDRESS}")
    for line in by_network:
        say(f"      {line}")
    volumes_log = b.adapters["volumes"].log()
    moved = f"dataset {DATASET}: moved from host A to host B"
    expect(moved in volumes_log, f"volumes (host B): {moved}")
    _show(volumes_log, lambda line: moved in line)
    with closing(sqlite3.connect(state)) as db:
        row = db.execute("SELECT host FROM datasets WHERE name = ?", (DATASET,)).fetchone()
    expect(row == ("B",), f"volumes: the control service's state file says host B owns "
                          f"{DATASET!r}")
    network_log = b.adapters["network"].log()
    confirmed = f"has {ADDRESS} on weave-10.2.1.0-24"
    expect(confirmed in network_log, f"network (host B): the start post-hook confirmed {ADDRESS}")
    _show(network_log, lambda line: confirmed in line)
    result = run_docker(b, "run", "--rm", "--privileged", "busybox", "true")
    expect(result.returncode != 0 and "policy" in result.stderr.lower(),
           "policy (host B): a privileged container is refused, and the CLI says why")


def _diff(text: str, since: int) -> list[str]:
    """The changed lines (not the ---/+++ headers) the debug adapter printed after
    ``changed since call N`` for the last create request in ``text``."""
    sections = text.split(f"changed since call {since}:")
    if len(sections) < 2:
        return []
    block = sections[-1].split("── ", 1)[0]
    return [line.strip() for line in block.splitlines()
            if re.match(r"^\s+[+-]\s", line) and not re.match(r"^\s+(\+\+\+|---)", line)]


def _show(log: str, keep: Callable[[str], bool]) -> None:
    for line in [line for line in log.splitlines() if keep(line)][-4:]:
        say(f"      {line}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when every step held."""
    parser = argparse.ArgumentParser(prog="powerstrip demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (logs, state) afterwards")
    parser.add_argument("--local", action="store_true",
                        help="the one-machine story: two engines sharing a state file, no "
                             "network between them (without it: the cluster story)")
    args = parser.parse_args(argv)
    if not args.local:
        from powerstrip_dev import cluster

        return cluster.main(["--keep"] if args.keep else [])

    engine.ensure_packages()
    # Short: the engines' unix sockets live under it.
    workdir = Path(tempfile.mkdtemp(prefix="ps-demo-", dir="/tmp"))
    say(f"Powerstrip demo: two hosts, one dataset, one address (working directory {workdir})")
    hosts: list[Host] = []
    try:
        state = workdir / "datasets.sqlite"
        for name in ("A", "B"):
            hosts.append(start_host(name, workdir, state))
        story(*hosts, state)
    except (StepFailed, ServiceError, engine.ThrowawayEngineError) as exc:
        say(f"  ✗ {exc}")
        say(f"demo FAILED; logs in {workdir / 'logs'}")
        args.keep = True
        return 1
    finally:
        for host in reversed(hosts):
            stop_host(host)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    say()
    say("demo passed: the container's data and address followed it from host A to host B")
    return 0


if __name__ == "__main__":
    sys.exit(main())

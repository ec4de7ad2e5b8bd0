"""The run command: Powerstrip with the example adapters in front of a Docker Engine.

It uses the daemon at ``--upstream`` when that answers, and otherwise starts a throwaway engine
(``powerstrip_dev.engine``) for as long as the rig runs. It starts the four example adapters of
``adapters/`` on the ports ``powerstrip.yml`` names, then serves with ``powerstrip.yml``: container
create goes through ``debug -> volumes -> debug -> network -> debug -> policy`` (the debug adapter
between the others prints what each one changed), start gets the debug and network post-hooks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from powerstrip import cli
from powerstrip_dev import engine
from powerstrip_dev.processes import Service, python, start_service

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ROOT / "adapters"
#: The example adapters, in the order they are started.
NAMES = ("debug", "volumes", "network", "policy")
#: Where ``make run`` serves metrics, health and the live trace.
DEFAULT_ADMIN = "tcp://127.0.0.1:9180"

#: Where the rig serves them, and ``powerstrip.yml`` expects them.
DEFAULT_LISTEN = {name: f"127.0.0.1:{9101 + n}" for n, name in enumerate(NAMES)}
DEFAULT_URLS = {name: f"http://{address}/" for name, address in DEFAULT_LISTEN.items()}


def chain_config(urls: Mapping[str, str]) -> str:
    """The adapters file chaining the example adapters at ``urls`` (name -> URL)."""
    return f"""\
# Powerstrip configuration: the adapters file (the 2015 adapters.yml format).
# Endpoint keys are "METHOD PATH-GLOB"; pre and post name adapters, called in order.
# `make run` starts the example adapters of adapters/ at these URLs; see docs/adapters.md.
version: 1
endpoints:
  # The debug adapter between the others prints what each of them changed.
  "POST /*/containers/create":
    pre: [debug, volumes, debug, network, debug]
    # The network adapter holds an address for a create until it sees the daemon's answer.
    post: [network]
  "POST /*/containers/*/start":
    post: [debug, network]
  # The policy adapter sees every request, after the others on a create (the hooks of every
  # endpoint a request matches run in file order): its endpoints rule refuses what
  # adapters/policy.yml does not list, and its other rules judge every way to get what they
  # forbid (docs/policy.md).
  "* *":
    pre: [policy]
adapters:
  debug: {urls["debug"]}
  # Moving a dataset between hosts copies its data: give it time.
  volumes: {{url: "{urls["volumes"]}", timeout: 120}}
  network: {{url: "{urls["network"]}", timeout: 30}}
  # Protocol 2 tells the policy who asks, for the rules of its clients sections.
  policy: {{url: "{urls["policy"]}", protocol: 2}}
"""


def adapter_argv(
    name: str, listen: str, docker: str, state: Path, host_name: str, debug_output: Path | None
) -> list[str]:
    """The command line of example adapter ``name``, serving at ``listen`` (HOST:PORT) and
    talking to the engine at ``docker`` directly."""
    script = str(ADAPTERS / f"{name}.py")
    argv = python(script, "--listen", listen)
    if name == "debug" and debug_output is not None:
        argv += ["--output", str(debug_output)]
    elif name == "volumes":
        argv += ["--host-name", host_name, "--docker", docker, "--state", str(state)]
    elif name == "network":
        argv += ["--docker", docker]
    elif name == "policy":
        # --docker: the policy looks up the networks a service names on the engine itself.
        argv += ["--rules", str(ADAPTERS / "policy.yml"), "--docker", docker]
    return argv


def start_adapters(
    docker: str,
    logdir: Path,
    state: Path,
    host_name: str,
    listen: Mapping[str, str] | None = None,
    prefix: str = "",
) -> dict[str, Service]:
    """Start the four example adapters for the engine at ``docker``; ``listen`` maps names to
    HOST:PORT (default: any free port). Their output goes to ``logdir``; the debug adapter
    writes what it shows to ``logdir/PREFIXdebug.log``."""
    started: dict[str, Service] = {}
    try:
        for name in NAMES:
            argv = adapter_argv(name, (listen or {}).get(name, "127.0.0.1:0"), docker, state,
                                host_name, debug_log(logdir, prefix))
            started[name] = start_service(prefix + name, argv, logdir)
    except BaseException:
        stop_all(started.values())
        raise
    return started


def debug_log(logdir: Path, prefix: str = "") -> Path:
    """Where the debug adapter started by ``start_adapters`` writes what it shows."""
    return logdir / f"{prefix}debug.log"


def stop_all(services: Iterable[Service]) -> None:
    """Stop services, last started first."""
    for service in reversed(list(services)):
        service.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Start the engine if needed and the adapters, then serve until interrupted."""
    parser = argparse.ArgumentParser(prog="powerstrip-run", description=__doc__)
    parser.add_argument("--listen", default=os.environ.get("POWERSTRIP_LISTEN", cli.DEFAULT_LISTEN))
    parser.add_argument(
        "--upstream", default=os.environ.get("POWERSTRIP_UPSTREAM", cli.DEFAULT_UPSTREAM)
    )
    parser.add_argument("--config", default=str(ROOT / "powerstrip.yml"))
    parser.add_argument("--run-dir", default=str(ROOT / ".run"))
    parser.add_argument("--admin", default=os.environ.get("POWERSTRIP_ADMIN", DEFAULT_ADMIN),
                        help="the admin listener (metrics, health, the live trace); "
                        f"default {DEFAULT_ADMIN}")
    args = parser.parse_args(argv)
    rundir = Path(args.run_dir)

    throwaway = None
    upstream = args.upstream
    if engine.daemon_reachable(upstream):
        print(f"powerstrip: using the Docker daemon at {upstream}", file=sys.stderr)
    else:
        print(f"powerstrip: no Docker daemon at {upstream}; starting a throwaway engine",
              file=sys.stderr)
        engine.ensure_packages()
        throwaway = engine.Engine(rundir / "engine")
        throwaway.start()
        throwaway.ensure_image()
        upstream = throwaway.host
    adapters: dict[str, Service] = {}
    try:
        logdir = rundir / "logs"
        adapters = start_adapters(upstream, logdir, rundir / "datasets.sqlite", "local",
                                  DEFAULT_LISTEN)
        for service in adapters.values():
            print(f"powerstrip: adapter {service.name} at {service.url} "
                  f"(log: {service.stderr_path})", file=sys.stderr)
        print(
            f"powerstrip: the debug adapter's view: tail -f {debug_log(logdir)}\n"
            "powerstrip: try, in another shell, after the export line below:\n"
            "  docker run --rm busybox echo hello through powerstrip\n"
            "  docker run --rm -v /flocker/db:/data busybox sh -c 'date >> /data/d; cat /data/d'\n"
            "  docker run -d --name web -e WEAVE_CIDR=10.2.1.5/24 busybox httpd -f -p 80 -h /etc\n"
            "  docker run --rm -e WEAVE_CIDR=10.2.1.6/24 busybox wget -qO- 10.2.1.5/hostname\n"
            "  docker run --rm --privileged busybox true   # refused by the policy adapter",
            file=sys.stderr,
        )
        if args.admin.startswith("tcp://"):
            shown = "http://" + args.admin[len("tcp://"):]
            print(f"powerstrip: the live trace: {shown}/trace  (metrics: {shown}/metrics)",
                  file=sys.stderr)
        return cli.main(["serve", "--listen", args.listen, "--upstream", upstream,
                         "--config", args.config, "--admin", args.admin])
    finally:
        stop_all(adapters.values())
        if throwaway is not None:
            throwaway.stop()


if __name__ == "__main__":
    sys.exit(main())

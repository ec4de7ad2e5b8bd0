"""The network adapter as the Docker IPAM driver ``powerstrip-ipam``: a network made with it
gives addresses from the same reservations as the ``WEAVE_CIDR`` hook. Containers on it reach
each other; an address the driver gave is refused to the hook, and an address a hook's container
holds is never handed out by the driver."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerstrip.testing import short_tmpdir, start_adapter
from powerstrip_dev.engine import Engine
from powerstrip_dev.processes import start_proxy, stop_process
from tests.e2e.conftest import docker, ok, unique

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
DRIVER = "powerstrip-ipam"


@pytest.fixture(scope="module")
def rig() -> Iterator[dict]:
    root = Path(short_tmpdir("ps-ipam-"))
    plugins = root / "plugins"
    engine = Engine(root / "engine", plugin_dir=plugins)
    network = proxy = None
    try:
        engine.start()
        engine.ensure_image()
        network = start_adapter([sys.executable, str(REPO / "adapters" / "network.py"),
                                 "--listen", "127.0.0.1:0", "--docker", engine.host,
                                 "--plugin", DRIVER, "--plugin-dir", str(plugins)],
                                "network-ipam")
        config = root / "adapters.yml"
        config.write_text(
            'version: 1\nendpoints:\n  "POST /*/containers/create": {pre: [network], '
            'post: [network]}\n  "POST /*/containers/*/start": {post: [network]}\n'
            f"adapters:\n  network: {network.url}\n")
        proxy = start_proxy(engine.host, logdir=root / "proxy", config=config)
        yield {"engine": engine.host, "proxy": proxy.docker_host}
    finally:
        if proxy is not None:
            stop_process(proxy.proc)
        log = network.log() if network is not None else ""
        if network is not None:
            network.stop()
        engine.stop(remove=True)
        shutil.rmtree(root, ignore_errors=True)
        assert "Traceback" not in log, log


def address_of(host: str, name: str, network: str) -> str:
    return ok(docker(host, "inspect", "--format",
                     f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}',
                     name)).decode().strip()


def test_one_set_of_reservations_for_the_driver_and_the_hook(rig) -> None:
    engine, proxy = rig["engine"], rig["proxy"]
    net = unique("weave")
    ok(docker(engine, "network", "create", "--ipam-driver", DRIVER, "--subnet", "10.2.1.0/24",
              net))
    made: list[str] = []
    try:
        # --ip through the driver, and two containers on its network reach each other.
        fixed = unique("fixed")
        made.append(fixed)
        ok(docker(engine, "run", "-d", "--name", fixed, "--network", net, "--ip", "10.2.1.5",
                  "busybox", "sleep", "300"))
        assert address_of(engine, fixed, net) == "10.2.1.5"
        ok(docker(engine, "run", "--rm", "--network", net, "busybox",
                  "ping", "-c", "1", "-W", "5", "10.2.1.5"))
        # The hook may not take what the driver gave...
        taken = docker(proxy, "run", "--rm", "-e", "WEAVE_CIDR=10.2.1.5/24", "busybox", "true")
        assert taken.returncode != 0
        assert "10.2.1.5 on network" in taken.stderr.decode() and \
            f"already given by the IPAM driver {DRIVER}" in taken.stderr.decode(), taken.stderr
        # ...and the driver never hands out what a hook's container holds, started or not.
        held = unique("held")
        made.append(held)
        ok(docker(proxy, "create", "--name", held, "-e", "WEAVE_CIDR=10.2.1.9/24", "busybox",
                  "sleep", "300"))
        dynamic = []
        for _ in range(9):
            name = unique("dyn")
            made.append(name)
            ok(docker(engine, "run", "-d", "--name", name, "--network", net, "busybox",
                      "sleep", "300"))
            dynamic.append(address_of(engine, name, net))
        assert len(set(dynamic)) == 9, dynamic
        assert "10.2.1.9" not in dynamic and "10.2.1.5" not in dynamic, dynamic
        assert "10.2.1.1" not in dynamic  # the gateway
        # The hook's container starts with its address, on the driver's network, and reaches
        # the one the driver placed.
        ok(docker(proxy, "start", held))
        assert address_of(engine, held, net) == "10.2.1.9"
        ok(docker(engine, "exec", held, "ping", "-c", "1", "-W", "5", "10.2.1.5"))
    finally:
        for name in made:
            docker(engine, "rm", "-f", name)
        docker(engine, "network", "rm", net)

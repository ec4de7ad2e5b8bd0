"""The volumes adapter as a Docker volume driver: two engines, each with the adapter served as
the plugin ``powerstrip-volumes`` in its own plugin directory, one state between them. A dataset
written through engine A is read through engine B with ``-v db:/data``, having moved; a mount on
B while a container on A uses it is refused with the adapter's message. Once with a SQLite file
for the state, once with etcd."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from powerstrip.testing import short_tmpdir, start_adapter
from powerstrip_dev.engine import Engine
from powerstrip_dev.etcd import EtcdServer
from powerstrip_dev.processes import start_proxy, stop_process
from tests.e2e.conftest import docker, ok, unique

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
DRIVER = "powerstrip-volumes"


@pytest.fixture(scope="module", params=["sqlite", "etcd"])
def hosts(request) -> Iterator[dict[str, Any]]:
    """Hosts A and B, their adapters sharing one SQLite file, or one etcd (the store of hosts
    that share only a network)."""
    root = Path(short_tmpdir("ps-vplug-"))
    engines: dict[str, Engine] = {}
    adapters = []
    proxy = None
    etcd = None
    if request.param == "etcd":
        etcd = EtcdServer(root / "etcd")
        etcd.start()
        store = etcd.url
    else:
        store = str(root / "datasets.sqlite")
    try:
        for name in ("A", "B"):
            plugins = root / f"plugins-{name}"
            engine = engines[name] = Engine(root / name.lower(), plugin_dir=plugins)
            engine.start()
            engine.ensure_image()
            adapters.append(start_adapter(
                [sys.executable, str(REPO / "adapters" / "volumes.py"), "--listen",
                 "127.0.0.1:0", "--host-name", name, "--docker", engine.host,
                 "--state", store, "--plugin", DRIVER,
                 "--plugin-dir", str(plugins)], f"volumes-{name}"))
        # Host A's Powerstrip, with the same adapter's hook on container create.
        config = root / "adapters.yml"
        config.write_text('version: 1\nendpoints:\n  "POST /*/containers/create": '
                          f"{{pre: [volumes]}}\nadapters:\n  volumes: {adapters[0].url}\n")
        proxy = start_proxy(engines["A"].host, logdir=root / "proxy", config=config)
        yield {**engines, "proxy A": proxy.docker_host}
    finally:
        if proxy is not None:
            stop_process(proxy.proc)
        logs = [adapter.log() for adapter in adapters]
        for adapter in adapters:
            adapter.stop()
        for engine in engines.values():
            engine.stop(remove=True)
        if etcd is not None:
            etcd.stop()
        shutil.rmtree(root, ignore_errors=True)
        for log in logs:
            assert "Traceback" not in log, log


def test_a_dataset_follows_its_volume_from_engine_to_engine(hosts) -> None:
    a, b = hosts["A"].host, hosts["B"].host
    dataset = unique("db")
    ok(docker(a, "volume", "create", "-d", DRIVER, dataset))
    ok(docker(a, "run", "--rm", "-v", f"{dataset}:/data", "busybox",
              "sh", "-c", "echo written on A > /data/f"))
    # B was never told of the volume: its engine finds it through the driver (scope global).
    out = ok(docker(b, "run", "--rm", "-v", f"{dataset}:/data", "busybox", "cat", "/data/f"))
    assert out == b"written on A\n"
    listed = ok(docker(b, "volume", "ls", "--filter", f"driver={DRIVER}", "--format",
                       "{{.Name}}"))
    assert dataset in listed.decode().split()
    # And back, through --mount with the driver named.
    out = ok(docker(a, "run", "--rm", "--mount",
                    f"type=volume,src={dataset},dst=/d,volume-driver={DRIVER}",
                    "busybox", "cat", "/d/f"))
    assert out == b"written on A\n"


def test_a_mount_while_another_host_uses_the_dataset_is_refused(hosts) -> None:
    a, b = hosts["A"].host, hosts["B"].host
    dataset, holder = unique("busy"), unique("holder")
    ok(docker(a, "volume", "create", "-d", DRIVER, dataset))
    ok(docker(a, "run", "-d", "--name", holder, "-v", f"{dataset}:/data", "busybox",
              "sleep", "300"))
    try:
        refused = docker(b, "run", "--rm", "-v", f"{dataset}:/data", "busybox", "true")
        stderr = refused.stderr.decode()
        assert refused.returncode != 0
        assert f"dataset {dataset} is in use on host A by running container {holder}" in stderr, \
            stderr
    finally:
        docker(a, "rm", "-f", holder)
    # Once it is free, the mount moves it.
    ok(docker(b, "run", "--rm", "-v", f"{dataset}:/data", "busybox", "true"))
    assert ok(docker(b, "volume", "rm", dataset)).strip() == dataset.encode()
    assert docker(a, "volume", "inspect", dataset).returncode != 0


def test_the_hook_and_the_driver_share_one_state(hosts) -> None:
    """A dataset the hook made (``-v /flocker/NAME`` through Powerstrip on A) is the driver's
    volume NAME on B, moved there by a mount."""
    dataset = unique("hooked")
    ok(docker(hosts["proxy A"], "run", "--rm", "-v", f"/flocker/{dataset}:/data", "busybox",
              "sh", "-c", "echo from the hook > /data/f"))
    out = ok(docker(hosts["B"].host, "run", "--rm", "-v", f"{dataset}:/data", "busybox",
                    "cat", "/data/f"))
    assert out == b"from the hook\n"
    assert docker(hosts["A"].host, "volume", "inspect", f"flocker-{dataset}").returncode != 0

"""The volumes adapter end to end: two real Docker Engines as hosts A and B, a proxy and a volumes
adapter in front of each, both adapters sharing one state file. Data written through one host
must follow its dataset to the other."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from powerstrip_dev.engine import Engine
from tests.e2e.conftest import (
    REPO,
    AdapterProcess,
    ProxyProcess,
    docker,
    launch_proxy,
    ok,
    start_adapter,
    start_engine,
    stop_proxy,
    unique,
)
from tests.rawhttp import call

pytestmark = pytest.mark.timeout(60)

VOLUMES = REPO / "adapters" / "volumes.py"


def _load() -> Any:
    # adapters/ is a directory of scripts, not a package; the state file is read with the
    # adapter's own code.
    spec = importlib.util.spec_from_file_location("volumes_adapter_e2e", VOLUMES)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


volumes = _load()


@dataclass
class Host:
    """One host: its engine, its volumes adapter and the proxy in front of the engine."""

    name: str
    engine: Engine
    state_path: Path
    workdir: Path
    adapter: AdapterProcess | None = None
    proxy: ProxyProcess | None = None

    @property
    def docker_host(self) -> str:
        """The proxy, as clients reach this host."""
        assert self.proxy is not None
        return self.proxy.host

    def start(self) -> None:
        """Start the adapter, then a proxy whose adapters file calls it on container create."""
        self.adapter = start_adapter(
            [sys.executable, str(VOLUMES), "--listen", "127.0.0.1:0", "--host-name", self.name,
             "--docker", self.engine.host, "--state", str(self.state_path),
             "--helper-image", "busybox"],
            f"volumes-{self.name}")
        config = self.workdir / f"adapters-{self.name}.yml"
        config.write_text(
            "version: 1\n"
            "endpoints:\n"
            '  "POST /*/containers/create":\n'
            "    pre: [volumes]\n"
            "adapters:\n"
            f'  volumes: {{url: "{self.adapter.url}", timeout: 120}}\n'
        )
        self.proxy = launch_proxy(self.engine.host, config)

    def stop(self) -> None:
        """Stop the proxy and the adapter; the adapter must not have logged a traceback."""
        if self.proxy is not None:
            stop_proxy(self.proxy)
            self.proxy = None
        if self.adapter is not None:
            log = self.adapter.log()
            self.adapter.stop()
            self.adapter = None
            assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def engine_b() -> Iterator[Engine]:
    """Host B's own dockerd, with busybox."""
    eng = start_engine()
    try:
        yield eng
    finally:
        eng.stop(remove=True)


@pytest.fixture(scope="module")
def hosts(engine: Engine, engine_b: Engine) -> Iterator[dict[str, Host]]:
    """Hosts A (the session's engine) and B, each with its proxy and adapter, one state file."""
    workdir = Path(tempfile.mkdtemp(prefix="ps-volumes-"))
    state_path = workdir / "datasets.sqlite"
    both = {"A": Host("A", engine, state_path, workdir), "B": Host("B", engine_b, state_path,
                                                                   workdir)}
    try:
        for host in both.values():
            host.start()
        yield both
    finally:
        for host in both.values():
            host.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def owner(hosts: dict[str, Host], dataset: str) -> str | None:
    """The host the shared state file says owns ``dataset``."""
    state = volumes.State(hosts["A"].state_path)
    try:
        record = state.dataset(dataset)
    finally:
        state.close()
    return record.host if record else None


def has_volume(host: Host, dataset: str) -> bool:
    """Whether the dataset's volume exists on ``host``'s engine (asked directly)."""
    result = docker(host.engine.host, "volume", "inspect", f"flocker-{dataset}")
    return result.returncode == 0


def transfer_containers(host: Host) -> bytes:
    """Containers the adapter made to carry data, asked directly: there should be none left."""
    return ok(docker(host.engine.host, "ps", "-aq", "--filter",
                     f"label={volumes.HELPER_LABEL}"))


def create_raw(host: Host, body: dict[str, Any]) -> tuple[int, str]:
    """POST a container create through ``host``'s proxy: the status and the message."""
    assert host.proxy is not None
    answer = call(host.proxy.host, "POST", "/v1.41/containers/create",
                  json.dumps(body).encode(), {"Content-Type": "application/json"})
    return answer.status, answer.json().get("message", "")


def binds(*binds: str) -> dict[str, Any]:
    """A create body for busybox with ``binds``."""
    return {"Image": "busybox", "Cmd": ["true"], "HostConfig": {"Binds": list(binds)}}


def test_data_follows_its_dataset_to_the_other_host(hosts):
    a, b = hosts["A"], hosts["B"]
    ds = unique("ds")
    ok(docker(a.docker_host, "run", "--rm", "-v", f"/flocker/{ds}:/data", "busybox",
              "sh", "-c", "echo hello > /data/file"))
    assert owner(hosts, ds) == "A"
    assert has_volume(a, ds)

    out = ok(docker(b.docker_host, "run", "--rm", "-v", f"/flocker/{ds}:/data:ro", "busybox",
                    "cat", "/data/file"))
    assert out == b"hello\n"
    assert owner(hosts, ds) == "B"
    assert has_volume(b, ds)
    assert not has_volume(a, ds), "the old host's copy is removed after a move"
    assert transfer_containers(a) == b"" and transfer_containers(b) == b""

    # And back again, through --mount this time.
    out = ok(docker(a.docker_host, "run", "--rm", "--mount",
                    f"type=bind,source=/flocker/{ds},target=/data", "busybox",
                    "cat", "/data/file"))
    assert out == b"hello\n"
    assert owner(hosts, ds) == "A"
    assert not has_volume(b, ds)


def peak_memory(proc: subprocess.Popen) -> int:
    """The peak resident memory of a running process, in bytes."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {proc.pid}")


def test_a_large_dataset_moves_in_bounded_memory(hosts):
    a, b = hosts["A"], hosts["B"]
    ds = unique("big")
    size = 96 * 1024 * 1024
    written = ok(docker(a.docker_host, "run", "--rm", "-v", f"/flocker/{ds}:/data", "busybox",
                        "sh", "-c", f"head -c {size} /dev/urandom > /data/blob && "
                        "md5sum /data/blob"))
    read = ok(docker(b.docker_host, "run", "--rm", "-v", f"/flocker/{ds}:/data", "busybox",
                     "md5sum", "/data/blob"))
    assert read == written
    assert owner(hosts, ds) == "B"
    # The archive went through a temporary file: the adapter never held it.
    assert b.adapter is not None
    assert peak_memory(b.adapter.proc) < size, f"peak {peak_memory(b.adapter.proc)} bytes"
    docker(b.engine.host, "volume", "rm", f"flocker-{ds}")


def test_a_dataset_a_running_container_uses_does_not_move(hosts):
    a, b = hosts["A"], hosts["B"]
    ds, holder = unique("ds"), unique("holder")
    try:
        ok(docker(b.docker_host, "run", "-d", "--name", holder, "-v", f"/flocker/{ds}:/data",
                  "busybox", "sleep", "300"))
        result = docker(a.docker_host, "run", "--rm", "-v", f"/flocker/{ds}:/data", "busybox",
                        "true")
        assert result.returncode != 0
        stderr = result.stderr.decode(errors="replace")
        assert (f"dataset {ds} is in use on host B by running container {holder}: "
                "it cannot move to host A while that container runs") in stderr, stderr
        status, message = create_raw(a, binds(f"/flocker/{ds}:/data"))
        assert status == 409, message
        assert owner(hosts, ds) == "B"
        assert not has_volume(a, ds)
        assert transfer_containers(a) == b"" and transfer_containers(b) == b""
    finally:
        docker(b.engine.host, "rm", "-f", holder)


def test_an_unknown_dataset_is_created_empty_on_the_asking_host(hosts):
    a, b = hosts["A"], hosts["B"]
    ds = unique("ds")
    out = ok(docker(b.docker_host, "run", "--rm", "-v", f"/flocker/{ds}:/data", "busybox",
                    "ls", "-A", "/data"))
    assert out == b""
    assert owner(hosts, ds) == "B"
    assert has_volume(b, ds)
    assert not has_volume(a, ds)


def test_a_create_without_datasets_passes_unchanged(hosts):
    a = hosts["A"]
    name, named = unique("plain"), unique("vol")
    try:
        ok(docker(a.docker_host, "create", "--name", name, "-v", "/tmp:/hosttmp:ro",
                  "-v", f"{named}:/v", "-v", "/flockers/x:/x", "busybox", "true"))
        inspected = json.loads(ok(docker(a.engine.host, "inspect", name)))[0]
        # The docker CLI collects -v values in a Go map: their order in Binds is random.
        assert sorted(inspected["HostConfig"]["Binds"]) == sorted([
            "/tmp:/hosttmp:ro", f"{named}:/v", "/flockers/x:/x"])
    finally:
        docker(a.engine.host, "rm", "-f", name)
        docker(a.engine.host, "volume", "rm", "-f", named)


def test_state_survives_an_adapter_restart(hosts):
    a, b = hosts["A"], hosts["B"]
    ds = unique("ds")
    ok(docker(a.docker_host, "run", "--rm", "-v", f"/flocker/{ds}:/data", "busybox",
              "sh", "-c", "echo kept > /data/file"))
    # A new adapter process for B knows only what the state file tells it: that A owns the
    # dataset, and where A's engine is.
    b.stop()
    b.start()
    out = ok(docker(b.docker_host, "run", "--rm", "-v", f"/flocker/{ds}:/data", "busybox",
                    "cat", "/data/file"))
    assert out == b"kept\n"
    assert owner(hosts, ds) == "B"
    assert not has_volume(a, ds)


def test_a_bad_dataset_name_is_refused(hosts):
    a = hosts["A"]
    result = docker(a.docker_host, "run", "--rm", "-v", "/flocker/bad$name:/data", "busybox",
                    "true")
    assert result.returncode != 0
    assert "'bad$name' is not a valid dataset name" in result.stderr.decode(errors="replace")
    status, message = create_raw(a, binds("/flocker/a/b:/data"))
    assert status == 400
    assert "'a/b' is not a valid dataset name" in message
    assert owner(hosts, "bad$name") is None


def test_an_unreachable_owner_fails_closed(hosts, tmp_path):
    a = hosts["A"]
    ds = unique("ds")
    gone = f"unix://{tmp_path}/gone.sock"
    state = volumes.State(a.state_path)
    try:
        state.register_host("C", gone)
        state.claim(ds, "C")
    finally:
        state.close()
    result = docker(a.docker_host, "run", "--rm", "-v", f"/flocker/{ds}:/data", "busybox",
                    "true")
    assert result.returncode != 0
    assert (f"dataset {ds}: cannot list the containers using it on host C (engine {gone}): "
            f"Docker Engine at {gone} unreachable") in result.stderr.decode(errors="replace")
    status, _ = create_raw(a, binds(f"/flocker/{ds}:/data"))
    assert status == 502
    assert owner(hosts, ds) == "C"
    assert not has_volume(a, ds)

"""docker-py (the ``docker`` package) through the proxy.

docker-py speaks HTTP through requests/urllib3 rather than Go's net/http, and hijacks attach and
exec sockets its own way, so it exercises the proxy differently from the CLI.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import docker
import pytest

from tests.e2e.conftest import unique

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(proxy) -> Iterator[docker.DockerClient]:
    """A docker-py client whose every request goes through the proxy."""
    made = docker.DockerClient(base_url=proxy.host, timeout=30)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def cleanup(engine) -> Iterator[list[str]]:
    """Container names to force-remove afterwards, directly on the engine."""
    names: list[str] = []
    yield names
    direct = docker.DockerClient(base_url=engine.host, timeout=30)
    try:
        for name in names:
            try:
                direct.containers.get(name).remove(force=True)
            except docker.errors.NotFound:
                pass
    finally:
        direct.close()


def test_ping(client):
    assert client.ping() is True
    assert client.version()["ApiVersion"] == "1.41"


def test_run_returns_output(client):
    assert client.containers.run("busybox", "echo hi", remove=True) == b"hi\n"


def test_run_failure_raises_with_stderr(client):
    with pytest.raises(docker.errors.ContainerError) as failure:
        client.containers.run("busybox", ["sh", "-c", "echo oops >&2; exit 3"], remove=True)
    assert failure.value.exit_status == 3
    assert b"oops" in failure.value.stderr


def test_exec_run(client, cleanup):
    name = unique("py-exec")
    cleanup.append(name)
    container = client.containers.run("busybox", "sleep 300", name=name, detach=True)
    result = container.exec_run(["sh", "-c", "echo exec-hi; exit 4"])
    assert (result.exit_code, result.output) == (4, b"exec-hi\n")
    demuxed = container.exec_run(["sh", "-c", "echo out; echo err >&2"], demux=True)
    assert demuxed.output == (b"out\n", b"err\n")


def test_logs_stream(client, cleanup):
    name = unique("py-logs")
    cleanup.append(name)
    container = client.containers.run(
        "busybox", ["sh", "-c", "echo one; echo two; sleep 300"], name=name, detach=True)
    stream = container.logs(stream=True, follow=True)
    lines: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        for chunk in stream:
            lines.put(chunk)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    received = b""
    while b"two\n" not in received:
        received += lines.get(timeout=10)
    assert received == b"one\ntwo\n"
    stream.close()


def test_events_stream(client, cleanup):
    name = unique("py-events")
    cleanup.append(name)
    # events() returns once the daemon has sent the response headers, so the subscription is in
    # place before the container below is created.
    stream = client.events(decode=True, filters={"type": "container", "container": name})
    seen: queue.Queue[dict] = queue.Queue()

    def pump() -> None:
        for event in stream:
            seen.put(event)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        client.containers.create("busybox", "true", name=name)
        event = seen.get(timeout=10)
        assert event["Action"] == "create"
        assert event["Actor"]["Attributes"]["name"] == name
    finally:
        stream.close()
        reader.join(10)
    assert not reader.is_alive()

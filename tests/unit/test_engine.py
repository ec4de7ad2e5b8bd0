"""The parts of powerstrip_dev.engine that need no Docker daemon."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerstrip_dev import engine
from powerstrip_dev.engine import Engine, ThrowawayEngineError, daemon_reachable

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # pytest's own tmp paths can exceed the unix socket path limit.
    path = Path(tempfile.mkdtemp(prefix="ps-u-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class OneShotServer:
    """A unix socket server that answers one request with a canned reply and keeps the request."""

    def __init__(self, path: Path, reply: bytes) -> None:
        self.reply = reply
        self.request = b""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn, self.listener:
            while b"\r\n\r\n" not in self.request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                self.request += chunk
            conn.sendall(self.reply)


def test_reachable_on_ok_ping(short_tmp):
    sock = short_tmp / "d.sock"
    server = OneShotServer(sock, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
    assert daemon_reachable(f"unix://{sock}")
    server.thread.join(5)
    assert server.request.startswith(b"GET /_ping HTTP/1.1\r\n")


def test_not_reachable_on_other_answers(short_tmp):
    sock = short_tmp / "d.sock"
    OneShotServer(sock, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\nOK")
    assert not daemon_reachable(f"unix://{sock}")
    OneShotServer(short_tmp / "e.sock", b"garbage\r\n\r\n")
    assert not daemon_reachable(f"unix://{short_tmp / 'e.sock'}")


def test_not_reachable_when_nothing_listens(short_tmp):
    assert not daemon_reachable(f"unix://{short_tmp / 'missing.sock'}")
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    assert not daemon_reachable(f"tcp://127.0.0.1:{port}", timeout=1)


def test_not_reachable_when_silent(short_tmp):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(short_tmp / "silent.sock"))
    listener.listen(1)
    with listener:
        assert not daemon_reachable(f"unix://{short_tmp / 'silent.sock'}", timeout=0.3)


@pytest.mark.parametrize("host", ["ssh://me@box", "/var/run/docker.sock", "tcp://nohost"])
def test_unsupported_hosts_are_refused(host):
    with pytest.raises(ValueError):
        daemon_reachable(host)


def test_engine_paths(tmp_path):
    eng = Engine(tmp_path / "e")
    assert eng.socket_path == tmp_path / "e" / "docker.sock"
    assert eng.host == f"unix://{tmp_path / 'e' / 'docker.sock'}"
    assert eng.pid() is None


def test_socket_path_too_long():
    with pytest.raises(ThrowawayEngineError, match="too long"):
        Engine("/tmp/" + "x" * 120).start()


def test_stale_pidfile_of_an_unrelated_process_is_ignored_and_removed(short_tmp):
    eng = Engine(short_tmp)
    # This test process is alive but is no dockerd for this root.
    eng.pidfile.write_text(f"{os.getpid()}\n")
    eng.socket_path.write_text("")
    assert eng.pid() is None
    eng.stop()
    assert not eng.pidfile.exists() and not eng.socket_path.exists()


def test_stop_with_remove_deletes_the_root(short_tmp):
    root = short_tmp / "root"
    (root / "data").mkdir(parents=True)
    Engine(root).stop(remove=True)
    assert not root.exists()


def test_log_tail(short_tmp):
    eng = Engine(short_tmp)
    eng.logfile.write_text("".join(f"line {i}\n" for i in range(100)))
    tail = eng.log_tail(3)
    assert tail.endswith("line 97\nline 98\nline 99")
    assert "(no dockerd log" in Engine(short_tmp / "nope").log_tail()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("busybox", ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("registry:5000/team/img", ("registry:5000/team/img", "latest")),
        ("registry:5000/team/img:v2", ("registry:5000/team/img", "v2")),
    ],
)
def test_split_reference(name, expected):
    assert engine._split_reference(name) == expected


def test_json_messages_ignores_chunking():
    body = b'{"status":"a"}\r\n{"status":"b"}{"error":"c"}\n'
    assert engine._json_messages(body) == [{"status": "a"}, {"status": "b"}, {"error": "c"}]
    assert engine._json_messages(b'{"status":"a"}{"trunc') == [{"status": "a"}]


def test_busybox_rootfs_tar():
    with tarfile.open(fileobj=io.BytesIO(engine.busybox_rootfs_tar())) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
        assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
        assert members["tmp"].mode == 0o1777
        passwd = tar.extractfile("etc/passwd").read()
    assert passwd.startswith(b"root:x:0:0:")
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())


class FakeRun:
    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.commands: list[list[str]] = []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        return subprocess.CompletedProcess(command, self.codes.pop(0), b"apt says no\n", None)


def test_ensure_packages_does_nothing_when_present(monkeypatch):
    fake = FakeRun([])
    monkeypatch.setattr(engine.shutil, "which", lambda name, path=None: f"/usr/bin/{name}")
    monkeypatch.setattr(engine, "BUSYBOX", Path(__file__))
    monkeypatch.setattr(engine.subprocess, "run", fake)
    engine.ensure_packages()
    assert fake.commands == []


def test_ensure_packages_installs_what_is_missing(monkeypatch):
    fake = FakeRun([0, 0])
    monkeypatch.setattr(
        engine.shutil, "which", lambda name, path=None: None if name == "dockerd" else name)
    monkeypatch.setattr(engine, "BUSYBOX", Path("/nonexistent/busybox"))
    monkeypatch.setattr(engine.os, "geteuid", lambda: 0)
    monkeypatch.setattr(engine.subprocess, "run", fake)
    engine.ensure_packages()
    assert fake.commands == [
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "docker.io", "busybox-static"],
    ]


def test_ensure_packages_reports_apt_output(monkeypatch):
    fake = FakeRun([0, 100])
    monkeypatch.setattr(engine.shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(engine.os, "geteuid", lambda: 0)
    monkeypatch.setattr(engine.subprocess, "run", fake)
    with pytest.raises(ThrowawayEngineError, match="apt says no"):
        engine.ensure_packages()


def test_ensure_packages_needs_root(monkeypatch):
    monkeypatch.setattr(engine.shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(engine.os, "geteuid", lambda: 1000)
    with pytest.raises(ThrowawayEngineError, match="need root"):
        engine.ensure_packages()


def test_descendants_finds_grandchildren_and_kill_respects_start_time():
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        found: set = set()
        deadline = time.monotonic() + 5
        while len(found) < 2 and time.monotonic() < deadline:
            found = engine._descendants(parent.pid)
            time.sleep(0.02)
        assert len(found) == 2
        impostor = engine._Process(next(iter(found)).pid, "0")
        impostor.kill()  # wrong start time: must not be signalled
        assert engine._descendants(parent.pid) == found
        for process in found:
            process.kill()
        # With both children gone, the shell's wait returns and it exits.
        parent.wait(5)
    finally:
        parent.kill()
        parent.wait()

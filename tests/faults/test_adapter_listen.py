"""An SDK adapter's listening socket holds a burst: the proxy opens one connection per hook call
in flight, and past Twisted's default backlog of 50 the rest would wait for SYN retransmits."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from powerstrip.proxy.addresses import LISTEN_BACKLOG
from powerstrip.testing import start_adapter, stop_process

NULL = Path(__file__).resolve().parents[2] / "adapters" / "null_adapter.py"


def listen_backlog(port: int) -> int:
    """The backlog of the TCP socket listening on ``port``, as ``ss`` reports it (Send-Q)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=10, check=True).stdout
    return int(out.split()[2])


@pytest.mark.timeout(30)
def test_the_standard_library_null_adapter_queues_a_burst_too() -> None:
    adapter = start_adapter([sys.executable, str(NULL), "--listen", "127.0.0.1:0"], "null")
    try:
        port = int(adapter.url.rstrip("/").rsplit(":", 1)[1])
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert listen_backlog(port) == min(LISTEN_BACKLOG, somaxconn)
    finally:
        stop_process(adapter.proc)


@pytest.mark.timeout(60)
def test_an_sdk_adapter_takes_a_burst_of_300_connections(tmp_path: Path) -> None:
    source = tmp_path / "quiet.py"
    source.write_text(
        "from powerstrip.adapter import Adapter\n\napp = Adapter('quiet')\n\n"
        "if __name__ == '__main__':\n    app.run()\n")
    adapter = start_adapter([sys.executable, str(source), "--listen", "127.0.0.1:0"], "quiet")
    try:
        port = int(adapter.url.rstrip("/").rsplit(":", 1)[1])
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert listen_backlog(port) == min(LISTEN_BACKLOG, somaxconn)
        clients = []
        try:
            for _ in range(300):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                clients.append(sock)
            for sock in clients:
                sock.setblocking(True)
                sock.settimeout(20)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            heads = [sock.recv(64).split(b"\r\n", 1)[0] for sock in clients]
        finally:
            for sock in clients:
                sock.close()
        assert all(head.startswith(b"HTTP/1.1 405") for head in heads), set(heads)
    finally:
        stop_process(adapter.proc)


@pytest.mark.timeout(30)
def test_an_sdk_adapter_on_a_unix_socket_is_not_open_to_every_local_user(tmp_path: Path) -> None:
    """Anyone who can post to an adapter can make up the ``Client`` of a protocol 2 call: its
    socket is the owner's and the group's only, whatever the umask."""
    import os
    import stat

    source = tmp_path / "quiet.py"
    source.write_text(
        "from powerstrip.adapter import Adapter\n\napp = Adapter('quiet')\n\n"
        "if __name__ == '__main__':\n    app.run()\n")
    path = tmp_path / "adapter.sock"
    old = os.umask(0)
    try:
        adapter = start_adapter([sys.executable, str(source), "--unix", str(path)], "quiet")
    finally:
        os.umask(old)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o007 == 0, oct(mode)
    finally:
        stop_process(adapter.proc)

"""A throwaway etcd (Debian's ``etcd-server``) for tests and the demo: one member, its data in
a directory of its own, on free loopback ports, stopped and started again at will (for the
tests of what adapters do while their store is away)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from powerstrip_dev.fabric import nsenter


class EtcdError(RuntimeError):
    """The etcd server could not be started; the message says why (its log's tail)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EtcdServer:
    """``etcd`` serving its client API (and the v3 JSON gateway) on ``url``."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1",
                 netns: str | None = None) -> None:
        """``netns``: a network namespace (``ip netns add``) to serve in, at ``host`` on
        etcd's own ports; without it, free loopback ports of this machine."""
        self.root = Path(root)
        self.host = host
        self.netns = netns
        if netns is None:
            self.client_port, self.peer_port = _free_port(), _free_port()
        else:
            self.client_port, self.peer_port = 2379, 2380
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """How adapters name it: ``etcd://HOST:PORT``."""
        return f"etcd://{self.host}:{self.client_port}"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start it (again, on the same ports and data) and wait until it answers."""
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "etcd.log", "ab")  # noqa: SIM115 - the process writes it
        prefix = [] if self.netns is None else nsenter(self.netns, [])
        self.proc = subprocess.Popen(
            [*prefix, binary, "--name", "default", "--data-dir", str(self.root / "data"),
             "--listen-client-urls", self.http, "--advertise-client-urls", self.http,
             "--listen-peer-urls", f"http://{self.host}:{self.peer_port}",
             "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port}",
             "--initial-cluster", f"default=http://{self.host}:{self.peer_port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EtcdError(f"etcd exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.http + "/health", timeout=1) as answer:
                    if b"true" in answer.read():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise EtcdError(f"etcd did not answer within {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        """Stop it; its data stays for the next ``start``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "etcd.log").read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

"""Connecting to the daemon's unix socket: at once when it accepts, and by waiting (Twisted's
connector) when its listen queue is full, never by failing a request the daemon would take."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.faults.test_faults import answer_pings, proxy_factory, read_response  # noqa: F401


@pytest.mark.timeout(30)
def test_a_daemon_whose_listen_queue_is_full_is_waited_for(proxy_factory, tmp_path):  # noqa: F811
    path = tmp_path / "full.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    # Fill the queue: connects that are not accepted until the queue refuses more.
    fillers = []
    while True:
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(str(path))
        except BlockingIOError:
            filler.close()
            break
        fillers.append(filler)
    assert fillers, "the queue took no connection at all"
    proxy = proxy_factory(f"unix://{path}")

    def accept_later() -> None:
        time.sleep(1.0)
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer_pings, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_later, daemon=True).start()
    try:
        with proxy.connect() as sock:
            sock.settimeout(20)
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert body == b"OK"
    finally:
        for filler in fillers:
            filler.close()
        server.close()

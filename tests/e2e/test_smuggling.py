"""Request smuggling and parser differentials, against the real daemon.

Each raw request of the corpus goes, followed by a plain ``_ping`` on the same connection,
once straight to the daemon and once through Powerstrip. Through Powerstrip it must either be
framed exactly as the daemon frames it (the same answers, in the same order) or be refused: one
Docker-style 4xx, and the connection closed, so that nothing hidden in or after it reaches the
daemon. (In the hooked run every request passes a catch-all pre- and post-hook, so a request
smuggled inside another would also be one that no hook saw.)
"""

from __future__ import annotations

import json

import httptools
import pytest

from tests.rawhttp import connect

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

#: A target that changes nothing (no such container): 404 from the daemon.
NOWHERE = b"/v1.41/containers/ps-smuggle-none/stop"
PING = b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n"


def post(headers: bytes, body: bytes = b"") -> bytes:
    return b"POST " + NOWHERE + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body


CORPUS = {
    "content-length then transfer-encoding":
        post(b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    "transfer-encoding then content-length":
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"0\r\n\r\n"),
    "two different content-lengths":
        post(b"Content-Length: 2\r\nContent-Length: 40\r\n", b"{}"),
    "two equal content-lengths": post(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"),
    "signed content-length": post(b"Content-Length: +2\r\n", b"{}"),
    "content-length list": post(b"Content-Length: 2, 2\r\n", b"{}"),
    "chunked not last": post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    "xchunked": post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    "transfer-encoding folded":
        post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
    "obs-fold": post(b"X-Folded: a\r\n b\r\nContent-Length: 0\r\n"),
    "space before colon": post(b"Content-Length : 2\r\n", b"{}"),
    "bare CR in a header": post(b"X-Cr: a\rb\r\nContent-Length: 0\r\n"),
    "NUL in a header": post(b"X-Nul: a\x00b\r\nContent-Length: 0\r\n"),
    "control byte in a header": post(b"X-Ctl: a\x01b\r\nContent-Length: 0\r\n"),
    "bare LF line ends": b"GET /v1.41/_ping HTTP/1.1\nHost: x\n\n",
    "overflowing chunk size":
        post(b"Transfer-Encoding: chunked\r\n", b"fffffffffffffffff1\r\nab\r\n0\r\n\r\n"),
    "chunk extension": post(b"Transfer-Encoding: chunked\r\n", b"2;ext=1\r\n{}\r\n0\r\n\r\n"),
    "chunk size with spaces": post(b"Transfer-Encoding: chunked\r\n", b"2 \r\n{}\r\n0\r\n\r\n"),
    "chunked with trailer":
        post(b"Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n"),
    "chunk data without CRLF": post(b"Transfer-Encoding: chunked\r\n", b"2\r\n{}0\r\n\r\n"),
    "HTTP/1.0 keep-alive":
        b"GET /v1.41/_ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "HTTP/1.0 without keep-alive": b"GET /v1.41/_ping HTTP/1.0\r\n\r\n",
    "absolute-form target": b"GET http://x/v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n",
    "lower-case method": b"get /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n",
    "tab in the request line": b"GET\t/v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "expect 100-continue": post(b"Expect: 100-continue\r\nContent-Length: 2\r\n", b"{}"),
    "a request inside a body":
        post(b"Content-Length: %d\r\n" % len(PING), PING),
}


def answers(host: str, raw: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """Send ``raw`` then a ``_ping``; the answers (status, body) read until the peer closes
    or stays silent for a second, and whether it closed."""
    sock = connect(host)
    found: list[tuple[int, bytes]] = []

    class Target:
        body = b""

        def on_body(self, data: bytes) -> None:
            self.body += data

        def on_message_complete(self) -> None:
            found.append((parser.get_status_code(), self.body))
            self.body = b""

    target = Target()
    parser = httptools.HttpResponseParser(target)
    closed = False
    try:
        sock.sendall(raw + PING)
        sock.settimeout(1.0)
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                parser = httptools.HttpResponseParser(target)  # after a Connection: close
    finally:
        sock.close()
    return found, closed


@pytest.mark.parametrize("raw", CORPUS.values(), ids=list(CORPUS))
def test_powerstrip_frames_as_the_daemon_does_or_refuses(targets, raw):
    direct, _ = answers(targets["direct"], raw)
    proxied, closed = answers(targets["proxy"], raw)
    statuses = [status for status, _ in proxied]
    if statuses == [status for status, _ in direct]:
        return  # framed as the daemon frames it
    assert len(proxied) == 1 and 400 <= proxied[0][0] < 500 and closed, (
        f"neither the daemon's framing {[s for s, _ in direct]} nor a refusal: {statuses}")
    message = json.loads(proxied[0][1])["message"]
    assert message, "a Docker-style refusal says why"


def test_the_corpus_tells_the_daemon_apart_from_a_refusal(targets):
    """The comparison has teeth: the daemon answers the marker after a plain request."""
    direct, _ = answers(targets["direct"], post(b"Content-Length: 2\r\n", b"{}"))
    assert [status for status, _ in direct] == [404, 200]

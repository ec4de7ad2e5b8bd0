"""HTTP/1.1 written and read by hand, for tests that must see the framing (keep-alive,
pipelining, chunking, hijacks, repeated headers) exactly as it crosses the socket."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

TIMEOUT = 30.0


def connect(host: str) -> socket.socket:
    """A connected socket to ``host``, written as DOCKER_HOST is (``unix://`` or ``tcp://``)."""
    if host.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(host[len("unix://"):])
    else:
        address, port = host[len("tcp://"):].rsplit(":", 1)
        sock = socket.create_connection((address, int(port)), timeout=TIMEOUT)
    sock.settimeout(TIMEOUT)
    return sock


@dataclass
class Response:
    """One HTTP response as it came off the socket."""

    status_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        """The status code."""
        return int(self.status_line.split()[1])

    def header(self, name: str) -> str | None:
        """The value of the (first) header called ``name``, any case."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)

    def message(self) -> str:
        """The ``message`` of a Docker-style error."""
        assert "json" in (self.header("content-type") or ""), self
        document = self.json()
        assert isinstance(document, dict) and isinstance(document.get("message"), str), self
        return document["message"]


class Conn:
    """A keep-alive HTTP/1.1 connection: requests sent and responses read one at a time."""

    def __init__(self, host: str | None = None, sock: socket.socket | None = None) -> None:
        if sock is None:
            assert host is not None, "give a host or a socket"
            sock = connect(host)
        self.sock = sock
        #: Bytes received and not yet read as part of a response.
        self.buffer = b""

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def send(
        self, method: str, target: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, chunks: list[bytes] | None = None,
    ) -> None:
        """Send one request: ``body`` with a Content-Length, or ``chunks`` chunked."""
        lines = [f"{method} {target} HTTP/1.1", "Host: powerstrip-e2e"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        payload = b""
        if chunks is not None:
            lines.append("Transfer-Encoding: chunked")
            payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        elif body is not None:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; have {self.buffer[:300]!r}")
        self.buffer += data

    def read(self, head_only: bool = False) -> Response:
        """Read one response, framed by its Content-Length or chunked encoding; with
        ``head_only`` just its head (the rest stays in ``buffer``)."""
        while b"\r\n\r\n" not in self.buffer:
            self._more()
        raw, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
        response = Response(status_line, headers, b"")
        if head_only or response.status < 200 or response.status in (204, 304):
            return response
        response.body = self.read_body(response)
        return response

    def read_body(self, response: Response) -> bytes:
        """The body of ``response``, whose head was read with ``head_only``: framed by its
        Content-Length or chunked encoding, else (RFC 9112 6.3) by the connection's close."""
        length = response.header("content-length")
        if length is not None:
            while len(self.buffer) < int(length):
                self._more()
            body, self.buffer = self.buffer[:int(length)], self.buffer[int(length):]
            return body
        if (response.header("transfer-encoding") or "").lower() != "chunked":
            return self.read_to_close()
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                self._more()
            size_line, self.buffer = self.buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(self.buffer) < size + 2:
                self._more()
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2:]
            if size == 0:
                return body

    def read_to_close(self) -> bytes:
        """Everything until the other side closes (what is buffered first)."""
        data, self.buffer = self.buffer, b""
        while chunk := self.sock.recv(65536):
            data += chunk
        return data

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, **kwargs: Any) -> Response:
        """Send a request and read its response."""
        self.send(method, target, body, headers, **kwargs)
        return self.read(head_only=method == "HEAD")


def call(host: str, method: str, target: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Response:
    """One request on a fresh connection."""
    conn = Conn(host)
    try:
        return conn.request(method, target, body, headers)
    finally:
        conn.close()

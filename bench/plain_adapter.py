"""A null adapter written without Powerstrip's SDK, for the benchmark: asyncio streams only.

It answers every hook call with what it was sent (a pre-hook's ``ClientRequest`` as the
``ModifiedClientRequest``, a post-hook's ``ServerResponse`` as the ``ModifiedServerResponse``,
the wire format of ``powerstrip.hooks.wire``) over HTTP/1.1 keep-alive, and keeps account of its
own time: from the moment a call's head has arrived to the moment its answer is handed to the
socket. Each answer says that time in an ``Adapter-Time-Us`` header, and ``GET /stats`` answers
``{"calls": N, "connections": N, "median_us": ..., "mean_us": ...}`` over every call (and
every connection accepted) since the last ``POST /stats``, which answers the same and starts
afresh. The benchmark subtracts the adapter's own time from a hook's cost, so that what remains
is Powerstrip's.

It imports nothing from Powerstrip, so that its cost is not Powerstrip's code measured twice.
Its listen backlog is large, so that a burst of hook calls does not wait on SYN retransmits.

Usage: python bench/plain_adapter.py (--listen HOST:PORT | --unix PATH)
It prints ``listening on URL`` once listening (with the real port when port 0 was asked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time

#: Connections waiting to be accepted; the kernel caps it at ``net.core.somaxconn``.
BACKLOG = 4096


class Stats:
    """The adapter's own time per hook call, in seconds."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.connections = 0

    def document(self) -> dict:
        """What ``GET /stats`` answers."""
        times = self.times
        return {
            "calls": len(times),
            "connections": self.connections,
            "median_us": statistics.median(times) * 1e6 if times else None,
            "mean_us": statistics.fmean(times) * 1e6 if times else None,
        }


def answer_for(payload: bytes) -> tuple[int, bytes]:
    """The status and JSON body answering one hook call."""
    try:
        call = json.loads(payload)
        if call["Type"] == "pre-hook":
            answer = {"ModifiedClientRequest": call["ClientRequest"]}
        else:
            answer = {"ModifiedServerResponse": call["ServerResponse"]}
    except (ValueError, KeyError, TypeError) as exc:
        return 400, json.dumps({"message": f"plain adapter: not a hook call: {exc}"}).encode()
    return 200, json.dumps({"PowerstripProtocolVersion": 1, **answer}).encode()


def response(status: int, body: bytes, extra: str = "") -> bytes:
    """One keep-alive response, head and body in one buffer (one write: no Nagle wait)."""
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Unknown")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           stats: Stats) -> None:
    """Answer the requests of one keep-alive connection until the peer closes it."""
    stats.connections += 1
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            started = time.perf_counter()
            request_line, *fields = head[:-4].split(b"\r\n")
            method, target, _ = request_line.split(b" ", 2)
            length = 0
            close = False
            for field in fields:
                name, _, value = field.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            payload = await reader.readexactly(length) if length else b""
            if target.lstrip(b"/").startswith(b"stats"):
                writer.write(response(200, json.dumps(stats.document()).encode()))
                if method == b"POST":
                    stats.times.clear()
                    stats.connections = 0
            else:
                status, body = answer_for(payload)
                # The time reading the body is the adapter's too (a small body is already
                # buffered with the head).
                spent = time.perf_counter() - started
                stats.times.append(spent)
                writer.write(response(status, body, f"Adapter-Time-Us: {spent * 1e6:.1f}\r\n"))
            if close:
                return
    finally:
        writer.close()


async def main(argv: list[str] | None = None) -> None:
    """Listen where asked and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", metavar="HOST:PORT")
    where.add_argument("--unix", metavar="PATH")
    args = parser.parse_args(argv)
    stats = Stats()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, stats)

    if args.unix:
        if os.path.exists(args.unix):
            os.unlink(args.unix)
        server = await asyncio.start_unix_server(handle, args.unix, backlog=BACKLOG)
        url = f"unix://{args.unix}:/"
    else:
        host, _, port = args.listen.rpartition(":")
        server = await asyncio.start_server(handle, host.strip("[]") or "127.0.0.1", int(port),
                                            backlog=BACKLOG)
        address = server.sockets[0].getsockname()
        url = f"http://{address[0]}:{address[1]}/"
    print(f"listening on {url}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)

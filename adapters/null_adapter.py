#!/usr/bin/env python3
"""A null Powerstrip adapter: answers every hook call with what it was sent, unchanged.

It is the smallest complete adapter, written with the standard library only, and a starting point
for writing one: the protocol is in docs/protocol.md. Run it on TCP or on a unix socket::

    python adapters/null_adapter.py --listen 127.0.0.1:9000
    python adapters/null_adapter.py --unix /run/null-adapter.sock

and name it in the adapters file, as ``http://127.0.0.1:9000/`` or
``unix:///run/null-adapter.sock:/``. Once listening it prints ``listening on URL`` (with the real
port when port 0 was asked), and it logs one line per call to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class NullAdapter(BaseHTTPRequestHandler):
    """Echoes pre-hook and post-hook calls."""

    # Powerstrip keeps pooled connections to its adapters: HTTP/1.1 keep-alive needs every
    # answer to carry a Content-Length.
    protocol_version = "HTTP/1.1"
    # Buffer each answer so that its head and body leave in one write: sent separately, the
    # body can wait for the delayed ACK of the head (Nagle's algorithm), some 40 ms a call.
    wbufsize = -1

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        """One hook call: the answer carries the request (or response) exactly as it came."""
        length = int(self.headers.get("Content-Length") or 0)
        try:
            call = json.loads(self.rfile.read(length))
            if call["Type"] == "pre-hook":
                answer = {"ModifiedClientRequest": call["ClientRequest"]}
            else:
                answer = {"ModifiedServerResponse": call["ServerResponse"]}
        except (ValueError, KeyError, TypeError) as exc:
            # A non-2xx answer refuses the request; the client sees this message.
            self.reply(400, {"message": f"null adapter: not a hook call: {exc}"})
            return
        self.reply(200, {"PowerstripProtocolVersion": 1, **answer})

    def reply(self, status: int, document: dict) -> None:
        """Send ``document`` as a JSON answer, framed for keep-alive."""
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        """Who called, for the log line; unix socket peers have no address."""
        return self.client_address[0] if self.client_address else "unix"


#: The proxy opens a connection per hook call in flight; socketserver's default queue of 5 would
#: leave a burst of them to SYN retransmits (the kernel caps this at net.core.somaxconn).
QUEUE = 4096


class TCPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a listen queue that holds a burst."""

    request_queue_size = QUEUE


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """ThreadingHTTPServer's unix-socket counterpart."""

    daemon_threads = True
    request_queue_size = QUEUE


def main() -> int:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", metavar="HOST:PORT", help="a TCP address (port 0: any)")
    where.add_argument("--unix", metavar="PATH", help="a unix socket path")
    args = parser.parse_args()

    server: socketserver.BaseServer
    if args.unix:
        if os.path.exists(args.unix):
            os.unlink(args.unix)
        server = UnixHTTPServer(args.unix, NullAdapter)
        url = f"unix://{args.unix}:/"
    else:
        host, _, port = args.listen.rpartition(":")
        server = TCPServer((host or "127.0.0.1", int(port)), NullAdapter)
        url = f"http://{host or '127.0.0.1'}:{server.server_port}/"
    # SIGTERM ends it as Ctrl-C does: through the finally below, which removes the socket.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on {url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if args.unix:
            os.unlink(args.unix)
    return 0


if __name__ == "__main__":
    sys.exit(main())

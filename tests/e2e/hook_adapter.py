#!/usr/bin/env python3
"""A Powerstrip adapter for the end-to-end tests, written the way an independent adapter author
would write one: the standard library and the documented wire format, no Powerstrip code.

Run it with ``--port N`` (0 for any free port) and/or ``--unix PATH``; it prints ``PORT <n>``
and ``UNIX <path>`` on stdout once listening, then ``READY``. The URL path picks a behaviour and
the query string parameterises it:

=============================================  ================================================
``/null``                                      answer with what was sent, unchanged
``/record/NAME``                               the same, logging the call under NAME
``/add-env?name=K&value=V``                    pre-hook: append ``K=V`` to the body's ``Env``
``/rename?to=NEW``                             pre-hook: set ``name=NEW`` in the query
``/rewrite?method=M&request=R``                pre-hook: replace Method and/or Request
``/inspect-rewrite?label=K&value=V&name=N``    post-hook: set a label and/or ``Name`` in the
                                               inspect JSON
``/code?code=299``                             post-hook: replace Code
``/content-type?value=T``                      post-hook: replace ContentType
``/respond?code=&content_type=&body=``         post-hook: replace any of the three
``/refuse?status=403&message=M``               answer ``status`` with ``{"message": M}``
``/refuse-text?status=451&message=M``          answer ``status`` with M as text/plain
``/refuse-empty?status=403``                   answer ``status`` with an empty body
``/slow?seconds=N``                            wait N seconds, then answer unchanged
``/garbage``                                   answer 200 with text that is not JSON
``/wrong-object``                              answer 200 with JSON lacking the expected object
``/hang-up``                                   close the connection without answering
``/headers?set=PHASE:NAME:VALUE&drop=PHASE:N``  protocol 2: answer with the headers changed,
                                               PHASE ``pre`` or ``post`` (both repeatable)
=============================================  ================================================

Every behaviour also takes ``record=NAME`` (repeatable) to log the call it received under NAME.
``GET /log/NAME`` returns that log as a JSON list of ``{"Path": ..., "Call": ...}`` in arrival
order (with ``Raw``, the call's bytes as text, and ``CallId``, its ``Powerstrip-Call``
header); ``DELETE /log/NAME`` empties it. Every answer speaks the version of the call.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

_LOGS: dict[str, list[dict[str, Any]]] = {}
_LOGS_LOCK = threading.Lock()

Query = dict[str, list[str]]
#: What a behaviour answers: a JSON document (sent with 200), or (status, content type, body).
Answer = dict[str, Any] | tuple[int, str | None, bytes]


def _one(query: Query, key: str, default: str | None = None) -> str | None:
    values = query.get(key)
    return values[-1] if values else default


def _is_pre(call: dict[str, Any]) -> bool:
    return call.get("Type") == "pre-hook"


def _request(call: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"PowerstripProtocolVersion": call.get("PowerstripProtocolVersion", 1),
            "ModifiedClientRequest": {**call["ClientRequest"], **changes}}


def _response(call: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"PowerstripProtocolVersion": call.get("PowerstripProtocolVersion", 1),
            "ModifiedServerResponse": {**call["ServerResponse"], **changes}}


def echo(call: dict[str, Any], query: Query) -> Answer:
    """What was sent, unchanged."""
    return _request(call) if _is_pre(call) else _response(call)


def add_env(call: dict[str, Any], query: Query) -> Answer:
    """Append ``name=value`` to a container create body's ``Env``."""
    body = call["ClientRequest"]["Body"]
    if not _is_pre(call) or body is None:
        return echo(call, query)
    document = json.loads(body)
    document["Env"] = [*(document.get("Env") or []),
                       f"{_one(query, 'name')}={_one(query, 'value', '')}"]
    return _request(call, Body=json.dumps(document))


def rename(call: dict[str, Any], query: Query) -> Answer:
    """Set the ``name`` query parameter of the request (container create's name)."""
    if not _is_pre(call):
        return echo(call, query)
    target = call["ClientRequest"]["Request"]
    new = "name=" + quote(_one(query, "to", ""), safe="")
    if re.search(r"[?&]name=", target):
        target = re.sub(r"(?<=[?&])name=[^&]*", new, target)
    else:
        target += ("&" if "?" in target else "?") + new
    return _request(call, Request=target)


def rewrite(call: dict[str, Any], query: Query) -> Answer:
    """Replace the request's Method and/or Request."""
    changes = {}
    if "method" in query:
        changes["Method"] = _one(query, "method")
    if "request" in query:
        changes["Request"] = _one(query, "request")
    return _request(call, **changes) if _is_pre(call) else echo(call, query)


def inspect_rewrite(call: dict[str, Any], query: Query) -> Answer:
    """Change a container inspect answer: add a label and/or replace ``Name``."""
    if _is_pre(call):
        return echo(call, query)
    document = json.loads(call["ServerResponse"]["Body"])
    if "label" in query:
        config = document.setdefault("Config", {})
        config["Labels"] = {**(config.get("Labels") or {}),
                            _one(query, "label"): _one(query, "value", "")}
    if "name" in query:
        document["Name"] = _one(query, "name")
    return _response(call, Body=json.dumps(document))


def _post_changes(call: dict[str, Any], query: Query, changes: dict[str, Any]) -> Answer:
    return echo(call, query) if _is_pre(call) else _response(call, **changes)


def code(call: dict[str, Any], query: Query) -> Answer:
    """Replace the response's status code."""
    return _post_changes(call, query, {"Code": int(_one(query, "code", "299"))})


def content_type(call: dict[str, Any], query: Query) -> Answer:
    """Replace the response's Content-Type."""
    return _post_changes(call, query, {"ContentType": _one(query, "value")})


def respond(call: dict[str, Any], query: Query) -> Answer:
    """Replace any of the response's Code, ContentType and Body."""
    changes: dict[str, Any] = {}
    if "code" in query:
        changes["Code"] = int(_one(query, "code"))
    if "content_type" in query:
        changes["ContentType"] = _one(query, "content_type")
    if "body" in query:
        changes["Body"] = _one(query, "body")
    return _post_changes(call, query, changes)


def refuse(call: dict[str, Any], query: Query) -> Answer:
    """Refuse with a Docker-style JSON message."""
    message = json.dumps({"message": _one(query, "message", "refused")}).encode()
    return int(_one(query, "status", "403")), "application/json", message


def refuse_text(call: dict[str, Any], query: Query) -> Answer:
    """Refuse with a plain-text message."""
    message = _one(query, "message", "refused").encode()
    return int(_one(query, "status", "403")), "text/plain; charset=utf-8", message


def refuse_empty(call: dict[str, Any], query: Query) -> Answer:
    """Refuse with an empty body, as several 2015 adapters did."""
    return int(_one(query, "status", "403")), None, b""


def slow(call: dict[str, Any], query: Query) -> Answer:
    """Answer unchanged, after a while."""
    time.sleep(float(_one(query, "seconds", "5")))
    return echo(call, query)


def garbage(call: dict[str, Any], query: Query) -> Answer:
    """A 200 whose body is not JSON."""
    return 200, "text/plain", b"this is not JSON at all"


def wrong_object(call: dict[str, Any], query: Query) -> Answer:
    """Valid JSON, but carrying the other hook type's object instead of the expected one."""
    if _is_pre(call):
        return {"PowerstripProtocolVersion": 1,
                "ModifiedServerResponse": {"ContentType": None, "Body": "", "Code": 200}}
    return {"PowerstripProtocolVersion": 1, "ModifiedClientRequest": call["ClientRequest"]}


def headers(call: dict[str, Any], query: Query) -> Answer:
    """Protocol 2: answer with headers set (``set=PHASE:NAME:VALUE``) or dropped
    (``drop=PHASE:NAME``) in the pre-hook's request or the post-hook's response."""
    phase = "pre" if _is_pre(call) else "post"
    shown = dict((call["ClientRequest"] if _is_pre(call) else call["ServerResponse"])
                 .get("Headers") or {})
    for item in query.get("set", []):
        when, name, value = item.split(":", 2)
        if when == phase:
            shown[name] = [value]
    for item in query.get("drop", []):
        when, name = item.split(":", 1)
        if when == phase:
            shown.pop(name, None)
    return _request(call, Headers=shown) if _is_pre(call) else _response(call, Headers=shown)


BEHAVIOURS: dict[str, Callable[[dict[str, Any], Query], Answer]] = {
    "null": echo,
    "record": echo,
    "add-env": add_env,
    "rename": rename,
    "rewrite": rewrite,
    "inspect-rewrite": inspect_rewrite,
    "code": code,
    "content-type": content_type,
    "respond": respond,
    "refuse": refuse,
    "refuse-text": refuse_text,
    "refuse-empty": refuse_empty,
    "slow": slow,
    "garbage": garbage,
    "wrong-object": wrong_object,
    "headers": headers,
}


class Handler(BaseHTTPRequestHandler):
    """Routes hook calls by path; serves the call logs."""

    # Powerstrip pools keep-alive connections to adapters; answers carry a Content-Length.
    protocol_version = "HTTP/1.1"
    # Head and body in one write, so Nagle's algorithm never holds the body back.
    wbufsize = -1

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        """One line per request on stderr; unix socket peers have no address."""
        sys.stderr.write(f"hook_adapter: {format % args}\n")

    def _send(self, status: int, content_type: str | None, body: bytes) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, document: Any, status: int = 200) -> None:
        self._send(status, "application/json", json.dumps(document).encode())

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        """``/log/NAME``: the calls logged under NAME; ``/health``: liveness."""
        path = urlsplit(self.path).path
        if path.startswith("/log/"):
            with _LOGS_LOCK:
                self._send_json(list(_LOGS.get(path[len("/log/"):], [])))
        elif path == "/health":
            self._send_json({"ok": True})
        else:
            self._send_json({"message": f"no such log endpoint {path}"}, 404)

    def do_DELETE(self) -> None:  # noqa: N802 - http.server's name
        """``/log/NAME``: forget the calls logged under NAME."""
        path = urlsplit(self.path).path
        with _LOGS_LOCK:
            _LOGS.pop(path[len("/log/"):], None)
        self._send_json({"ok": True})

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        """A hook call."""
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        segments = parts.path.strip("/").split("/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            call = json.loads(raw)
        except ValueError:
            call = {"Unparsed": raw.decode("utf-8", "replace")}
        names = list(query.get("record", []))
        if segments[0] == "record" and len(segments) > 1:
            names.append(segments[1])
        with _LOGS_LOCK:
            for name in names:
                _LOGS.setdefault(name, []).append({
                    "Path": self.path, "Call": call, "Raw": raw.decode("utf-8", "replace"),
                    "CallId": self.headers.get("Powerstrip-Call")})

        if segments[0] == "hang-up":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        behaviour = BEHAVIOURS.get(segments[0])
        if behaviour is None:
            self._send_json({"message": f"hook_adapter: no behaviour {parts.path}"}, 404)
            return
        try:
            answer = behaviour(call, query)
        except Exception as exc:  # noqa: BLE001 - the test must see why, as a refusal
            self._send_json({"message": f"hook_adapter {parts.path} failed: {exc!r}"}, 500)
            return
        if isinstance(answer, dict):
            self._send_json(answer)
        else:
            self._send(*answer)


class _Quiet:
    """Servers that do not print tracebacks when Powerstrip gives up on a slow call."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[misc]


class TCPServer(_Quiet, ThreadingHTTPServer):
    """The adapter on TCP."""


class UnixServer(_Quiet, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The adapter on a unix socket (the ``unix://SOCKET:/PATH`` adapter URL form)."""


def main() -> int:
    """Serve on the addresses asked for until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--unix", help="unix socket path")
    args = parser.parse_args()
    if args.port is None and args.unix is None:
        parser.error("give --port and/or --unix")

    servers: list[socketserver.BaseServer] = []
    if args.port is not None:
        tcp = TCPServer(("127.0.0.1", args.port), Handler)
        servers.append(tcp)
        print(f"PORT {tcp.server_port}", flush=True)
    if args.unix is not None:
        if os.path.exists(args.unix):
            os.unlink(args.unix)
        servers.append(UnixServer(args.unix, Handler))
        print(f"UNIX {args.unix}", flush=True)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("READY", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

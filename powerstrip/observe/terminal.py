"""``powerstrip trace``: the live trace of a running proxy, in a terminal.

It reads what the ``/trace`` page reads, the admin listener's server-sent events, and prints one
block per request: the request line, who sent it and how it ended, then each hook in order with
its outcome, its time, what it changed and the adapter's message. The event parser and the
rendering are pure functions; only :func:`run` touches a socket.

The client is the standard library's ``http.client``: the stream is one long GET, which needs no
reactor, and the command must start fast and work where only the runtime package is installed.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

#: How long to wait before connecting again after the stream is lost.
RECONNECT_DELAY = 1.0
#: How long to wait for the admin listener to accept and answer.
CONNECT_TIMEOUT = 10.0
#: How long a stream may stay silent before it is taken for lost: the admin listener sends a
#: comment every 15 s (``powerstrip.proxy.admin.HEARTBEAT``), so three missed ones.
STREAM_TIMEOUT = 50.0


# --- server-sent events -------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One server-sent event: its type and its data."""

    kind: str
    data: str


class EventParser:
    """Server-sent events from lines, as the HTML living standard frames them: fields until a
    blank line, ``data`` lines joined with newlines, comment lines (``:``) ignored."""

    def __init__(self) -> None:
        self._kind = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """Take one line (without its ending); an event when the line ends one."""
        if line == "":
            if not self._data:
                self._kind = "message"
                return None
            event = Event(self._kind, "\n".join(self._data))
            self._kind, self._data = "message", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        return None


def events(lines: Iterable[str]) -> Iterator[Event]:
    """The events carried by ``lines``."""
    parser = EventParser()
    for line in lines:
        event = parser.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event


# --- what to show -------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The page's filters: each a case-insensitive substring, ``status`` also ``4xx``."""

    endpoint: str = ""
    client: str = ""
    status: str = ""
    adapter: str = ""

    def admit(self, request: dict[str, Any]) -> bool:
        """Whether ``request`` (a trace event) passes every filter."""
        if self.endpoint and self.endpoint.lower() not in str(request.get("endpoint")).lower():
            return False
        client = request.get("client") or {}
        if self.client and self.client.lower() not in str(client.get("name", "")).lower():
            return False
        if self.status and not _status_matches(self.status, request.get("status")):
            return False
        adapters = [str(hook.get("adapter", "")).lower() for hook in request.get("hooks", [])]
        return not self.adapter or any(self.adapter.lower() in name for name in adapters)


def _status_matches(wanted: str, status: object) -> bool:
    wanted = wanted.strip().lower()
    if len(wanted) == 3 and wanted.endswith("xx"):
        return str(status).startswith(wanted[0])
    return str(status).startswith(wanted)


_STYLES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}
_OUTCOME_STYLE = {"ok": "green", "refused": "yellow", "skipped": "dim"}


def _paint(text: str, style: str, color: bool) -> str:
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m" if color else text


def _status_style(status: int) -> str:
    if status >= 500 or status == 499:
        return "red"
    return "yellow" if status >= 400 else "green"


def render(request: dict[str, Any], color: bool = False) -> str:
    """One request as a block of lines: the request, then its hooks in order."""
    at = request.get("time") or 0.0
    clock = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
    status = int(request.get("status") or 0)
    client = (request.get("client") or {}).get("name", "?")
    head = (f"{_paint(clock, 'dim', color)}  {_paint(request.get('method', '?'), 'bold', color)} "
            f"{request.get('target', '')}  {_paint(str(status), _status_style(status), color)}  "
            f"{request.get('ms', 0):.1f} ms  {client}")
    lines = [head]
    endpoint = request.get("endpoint")
    details = [f"endpoint {endpoint}" if endpoint else "no endpoint matched"]
    if request.get("call"):
        details.append(f"call {request['call']}")
    details.append(f"{request.get('bytes_in', 0)} B in, {request.get('bytes_out', 0)} B out")
    lines.append("    " + _paint(", ".join(details), "dim", color))
    hooks = request.get("hooks") or []
    width = max((len(str(hook.get("adapter", ""))) for hook in hooks), default=0)
    for hook in hooks:
        outcome = str(hook.get("outcome", "?"))
        line = (f"    {hook.get('phase', '?'):<4} {str(hook.get('adapter', '')):<{width}}  "
                f"{_paint(f'{outcome:<11}', _OUTCOME_STYLE.get(outcome, 'red'), color)} "
                f"{hook.get('ms', 0):7.1f} ms")
        if hook.get("changed"):
            line += "  changed " + ", ".join(hook["changed"])
        if hook.get("message"):
            line += "  " + _paint(json.dumps(hook["message"]), _OUTCOME_STYLE.get(
                outcome, "red"), color)
        lines.append(line)
    return "\n".join(lines)


# --- the admin listener -------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket, for an admin listener given as ``unix:///path``."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


@dataclass(frozen=True)
class AdminTLS:
    """What to verify the admin listener with, and the client certificate to show it."""

    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        """A client context: the CA given (else the system's), the certificate if any."""
        context = ssl.create_default_context(cafile=self.cacert)
        if self.cacert:
            # The proxy's certificate names whatever host it was made for; the CA is the proof.
            context.check_hostname = False
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context


def connection_for(url: str, tls: AdminTLS | None = None,
                   timeout: float = CONNECT_TIMEOUT) -> http.client.HTTPConnection:
    """A connection to the admin listener at ``url``: ``http://``, ``https://``, ``tcp://``
    (plain, as ``--admin`` takes it, or TLS when ``tls`` is given) or ``unix:///path``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme == "unix":
        return _UnixConnection(unquote(parts.path), timeout)
    if parts.scheme not in ("http", "https", "tcp"):
        raise ValueError(f"--admin {url}: not an http://, https://, tcp:// or unix:// address")
    host, port = parts.hostname or "127.0.0.1", parts.port
    if parts.scheme == "https" or (parts.scheme == "tcp" and tls is not None):
        return http.client.HTTPSConnection(host, port, timeout=timeout,
                                           context=(tls or AdminTLS()).context())
    return http.client.HTTPConnection(host, port, timeout=timeout)


def _get(connection: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    connection.request("GET", path, headers={"Accept": "text/event-stream, application/json"})
    answer = connection.getresponse()
    if answer.status != 200:
        body = answer.read().decode("utf-8", "replace")
        try:
            body = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            pass
        raise ConnectionError(f"{path} answered {answer.status}: {body}")
    return answer


def _lines(answer: http.client.HTTPResponse) -> Iterator[str]:
    while True:
        line = answer.readline()
        if not line:
            return
        yield line.decode("utf-8", "replace")


def run(url: str, once: bool = False, filters: Filters | None = None,
        tls: AdminTLS | None = None, out: TextIO | None = None,
        color: bool | None = None, connect: Callable[..., Any] = connection_for) -> int:
    """Print the trace of the proxy whose admin listener is ``url``: the requests it keeps,
    then (unless ``once``) each new one as it ends, until interrupted. Returns the exit code."""
    out = out or sys.stdout
    filters = filters or Filters()
    if color is None:
        color = out.isatty()
    seen: dict[tuple[Any, Any], None] = {}

    def show(request: dict[str, Any]) -> None:
        key = (request.get("seq"), request.get("time"))
        if key in seen:
            return  # a reconnect replays the requests kept
        seen[key] = None
        if len(seen) > 10_000:
            seen.pop(next(iter(seen)))
        if filters.admit(request):
            print(render(request, color) + "\n", file=out, flush=True)

    connected_once = False
    try:
        while True:
            try:
                connection = connect(url, tls)
                if once:
                    for request in json.loads(_get(connection, "/trace/recent").read()):
                        show(request)
                    return 0
                connection.connect()
                connection.sock.settimeout(STREAM_TIMEOUT)
                answer = _get(connection, "/trace/events")
                if not connected_once:
                    print(_paint(f"watching {url} (Ctrl-C to stop)", "dim", color),
                          file=sys.stderr, flush=True)
                connected_once = True
                for event in events(_lines(answer)):
                    if event.kind == "request":
                        show(json.loads(event.data))
                problem = "the admin listener closed the stream"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                problem = str(exc) or type(exc).__name__
                if not connected_once:
                    print(f"powerstrip trace: cannot read the trace from {url}: {problem}",
                          file=sys.stderr, flush=True)
                    return 1
            print(f"powerstrip trace: {problem}; connecting again", file=sys.stderr, flush=True)
            time.sleep(RECONNECT_DELAY)
    except KeyboardInterrupt:
        return 0

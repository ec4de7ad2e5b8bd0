"""``powerstrip trace``: server-sent events parsed, requests rendered and filtered as the page
does, and the command's behaviour against a stand-in admin listener on a real socket."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerstrip.observe.terminal import Event, EventParser, Filters, events, render, run

REQUEST = {
    "seq": 7, "time": 1764740000.25, "call": "c0ffee",
    "client": {"transport": "unix", "address": "/run/ps.sock", "uid": 1001, "user": "ci",
               "name": "unix user ci (uid 1001)"},
    "method": "POST", "target": "/v1.41/containers/create?name=web",
    "path": "/containers/create", "endpoint": "POST /*/containers/create", "status": 403,
    "ms": 12.5, "head_ms": 12.0, "bytes_in": 300, "bytes_out": 120,
    "hooks": [
        {"adapter": "volumes", "phase": "pre", "outcome": "ok", "ms": 3.25,
         "changed": ["Body.HostConfig"], "message": None, "sent": None, "answer": None},
        {"adapter": "policy", "phase": "pre", "outcome": "refused", "ms": 0.5, "changed": [],
         "message": "binds outside /srv/ci are not allowed", "sent": None, "answer": None},
    ],
}


def test_events_are_framed_as_the_standard_says():
    lines = [": keep-alive", "", "event: request", "data: {\"a\":", "data: 1}", "",
             "data: plain", "", "event: ignored-without-data", ""]
    assert list(events(lines)) == [Event("request", '{"a":\n1}'), Event("message", "plain")]


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=20),
                max_size=5))
def test_any_data_lines_come_back_joined(datas):
    parser = EventParser()
    got = [parser.feed(f"data: {data}") for data in datas]
    assert got == [None] * len(datas)
    end = parser.feed("")
    assert end == (Event("message", "\n".join(datas)) if datas else None)


def test_a_request_renders_with_its_client_status_and_each_hook_in_order():
    text = render(REQUEST)
    lines = text.splitlines()
    assert "POST /v1.41/containers/create?name=web  403  12.5 ms  unix user ci (uid 1001)" \
        in lines[0]
    assert "endpoint POST /*/containers/create" in lines[1] and "call c0ffee" in lines[1]
    assert lines[2].split()[:3] == ["pre", "volumes", "ok"]
    assert "changed Body.HostConfig" in lines[2]
    assert lines[3].split()[:3] == ["pre", "policy", "refused"]
    assert '"binds outside /srv/ci are not allowed"' in lines[3]
    assert "\x1b[" not in text
    assert "\x1b[33m403" in render(REQUEST, color=True)


def test_an_unmatched_request_says_so():
    lines = render({**REQUEST, "endpoint": "", "hooks": [], "status": 200}).splitlines()
    assert len(lines) == 2 and "no endpoint matched" in lines[1]


@pytest.mark.parametrize(("filters", "admitted"), [
    (Filters(), True),
    (Filters(endpoint="containers/CREATE"), True),
    (Filters(endpoint="images"), False),
    (Filters(client="user ci"), True),
    (Filters(client="ops"), False),
    (Filters(status="4xx"), True),
    (Filters(status="403"), True),
    (Filters(status="5xx"), False),
    (Filters(adapter="POLICY"), True),
    (Filters(adapter="network"), False),
])
def test_filters_match_as_the_page_does(filters, admitted):
    assert filters.admit(REQUEST) is admitted


class _Admin(BaseHTTPRequestHandler):
    stream: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/trace/recent":
            body = json.dumps(self.stream).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/trace/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for request in self.stream:
                self.wfile.write(b": keep-alive\n\nevent: request\ndata: "
                                 + json.dumps(request).encode() + b"\n\n")
            self.close_connection = True
        else:
            body = b'{"message": "the trace is off (--trace-size 0)"}'
            self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(20)
def test_once_prints_the_kept_requests_through_the_filters(admin):
    _Admin.stream = [REQUEST, {**REQUEST, "seq": 8, "status": 201, "target": "/v1.41/ok",
                               "hooks": []}]
    out = io.StringIO()
    assert run(admin, once=True, out=out) == 0
    assert out.getvalue().count("/v1.41/") == 2
    out = io.StringIO()
    assert run(admin, once=True, out=out, filters=Filters(status="2xx")) == 0
    assert "/v1.41/ok" in out.getvalue() and "name=web" not in out.getvalue()


@pytest.mark.timeout(20)
def test_a_lost_stream_reconnects_without_repeating_requests(admin, monkeypatch):
    _Admin.stream = [REQUEST]
    monkeypatch.setattr("powerstrip.observe.terminal.RECONNECT_DELAY", 0.01)
    connects = []

    def connect(url, tls):
        from powerstrip.observe.terminal import connection_for

        connects.append(url)
        if len(connects) == 3:
            raise KeyboardInterrupt  # the user stops it
        return connection_for(url, tls)

    out = io.StringIO()
    assert run(admin, out=out, connect=connect) == 0
    assert len(connects) == 3
    assert out.getvalue().count("create?name=web") == 1


@pytest.mark.timeout(20)
def test_an_unreachable_or_disabled_trace_is_an_error_that_says_why(admin, capsys):
    assert run("http://127.0.0.1:1", once=True, out=io.StringIO()) == 1
    assert "cannot read the trace from http://127.0.0.1:1" in capsys.readouterr().err
    _Admin.stream = []
    assert run(admin + "/", out=io.StringIO(), connect=lambda url, tls: _wrong_path(url)) == 1
    assert "the trace is off" in capsys.readouterr().err


def _wrong_path(url):
    from powerstrip.observe import terminal

    connection = terminal.connection_for(url)
    original = connection.request
    connection.request = lambda method, path, **kw: original(method, "/nothing", **kw)
    return connection


def test_admin_addresses():
    from powerstrip.observe.terminal import AdminTLS, connection_for

    assert connection_for("tcp://127.0.0.1:9180").port == 9180
    assert type(connection_for("127.0.0.1:9").port) is int
    assert connection_for("unix:///run/ps-admin.sock").path == "/run/ps-admin.sock"
    assert type(connection_for("https://h:1")).__name__ == "HTTPSConnection"
    assert type(connection_for("tcp://h:1", AdminTLS())).__name__ == "HTTPSConnection"
    with pytest.raises(ValueError, match="not an http"):
        connection_for("ftp://x")

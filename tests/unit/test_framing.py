"""Request and response framing, without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powerstrip.core.framing import (
    END,
    Body,
    BodyKind,
    ChunkedTracker,
    FramingError,
    Head,
    RequestReader,
    ResponseReader,
    parse_request_head,
)


def chunked(parts: list[bytes]) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)
    return out + b"0\r\n\r\n"


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def run_reader(
    stream: bytes, cuts: list[int], *, whole_first: bool = False,
) -> list[tuple[bytes, bytes, bytes]]:
    """Feed ``stream`` in pieces; return (method, raw head, raw body) per request.

    With ``whole_first`` each piece is offered to ``whole_request`` first, as the proxy does.
    """
    reader = RequestReader()
    requests: list[list] = []

    def take(events: list) -> bool:
        for event in events:
            if isinstance(event, Head):
                requests.append([event.head.method, event.head.raw, b""])
            elif isinstance(event, Body):
                requests[-1][2] += event.data
            else:
                assert event is END
                return True
        return False

    for piece in split_at(stream, cuts):
        head = reader.whole_request(piece) if whole_first else None
        events = [Head(head), END] if head is not None else reader.feed(piece)
        if take(events):
            while take(reader.next_request()):
                pass
    return [tuple(r) for r in requests]


bodies = st.lists(st.binary(max_size=300), max_size=5)


@settings(max_examples=300)
@given(
    body_a=st.binary(max_size=2000),
    parts_b=bodies,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_pipelined_requests_split_exactly_wherever_the_reads_fall(body_a, parts_b, cuts):
    head_a = b"POST /v1.41/build HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body_a)
    head_b = b"POST /images/load HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    head_c = b"HEAD /_ping HTTP/1.1\r\nHost: api.moby.localhost\r\n\r\n"
    body_b = chunked(parts_b)
    stream = head_a + body_a + head_b + body_b + b"\r\n" + head_c
    got = run_reader(stream, cuts)
    assert got == [(b"POST", head_a, body_a), (b"POST", head_b, body_b), (b"HEAD", head_c, b"")]
    assert run_reader(stream, cuts, whole_first=True) == got
    # Pass-through is exact: concatenating what the reader reports rebuilds the stream
    # (less the stray CRLF between requests, which is not part of any request).
    assert b"".join(h + b for _, h, b in got) == stream.replace(body_b + b"\r\n", body_b)


@given(parts=bodies, trailer=st.booleans(), cuts=st.lists(st.integers(0, 5000), max_size=6))
def test_chunked_tracker_finds_the_end_and_nothing_past_it(parts, trailer, cuts):
    body = chunked(parts)
    if trailer:
        body = body[:-2] + b"X-Trailer: 1\r\n\r\n"
    stream = body + b"NEXT"
    tracker = ChunkedTracker()
    consumed = 0
    for piece in split_at(stream, cuts):
        end = tracker.feed(piece)
        consumed += end
        if tracker.done:
            break
    assert tracker.done
    assert consumed == len(body)


@pytest.mark.parametrize(
    "body",
    [b"zz\r\nab\r\n0\r\n\r\n", b"2\r\nabXY0\r\n\r\n", b"2\nab\r\n0\r\n\r\n", b"-1\r\n"],
)
def test_chunked_tracker_refuses_malformed_framing(body):
    with pytest.raises(FramingError):
        ChunkedTracker().feed(body)


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET x HTTP/1.1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"GET /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /x HTTP/1.1\r\nBad Header: 1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET http://evil/x HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests_are_refused_with_400(raw):
    with pytest.raises(FramingError) as info:
        RequestReader().feed(raw)
    assert info.value.status == 400


def test_an_endless_head_is_refused_before_it_grows_without_bound():
    reader = RequestReader(max_head=1000)
    reader.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(FramingError) as info:
        reader.feed(b"X-Pad: " + b"a" * 2000)
    assert info.value.status == 431


def test_head_fields():
    head = parse_request_head(
        b"POST /v1.41/exec/abc/start HTTP/1.1\r\nHost: api.moby.localhost\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Type: application/json\r\n"
        b"Content-Length: 27\r\n\r\n"
    )
    assert head.method == b"POST"
    assert head.path == b"/v1.41/exec/abc/start"
    assert head.body_kind is BodyKind.LENGTH and head.content_length == 27
    assert head.upgrade and head.may_hijack
    assert head.header(b"host") == b"api.moby.localhost"


@pytest.mark.parametrize(
    ("raw", "hijack"),
    [
        (b"POST /containers/x/attach?stream=1 HTTP/1.1\r\n\r\n", True),
        (b"POST /v1.24/exec/x/start HTTP/1.1\r\n\r\n", True),
        (b"GET /containers/x/attach/ws HTTP/1.1\r\n\r\n", False),
        (b"POST /containers/x/start HTTP/1.1\r\n\r\n", False),
        (b"GET /containers/json HTTP/1.1\r\n\r\n", False),
        # Routed as the daemon routes them: percent-decoded.
        (b"POST /v1.41/containers/x/%61ttach?stream=1 HTTP/1.1\r\n\r\n", True),
        (b"POST /v1.41/exec%2Fx%2Fstart HTTP/1.1\r\n\r\n", True),
        (b"POST /containers/x%2Fattach%2Fws HTTP/1.1\r\n\r\n", False),
        (b"POST /containers/%zz/attach HTTP/1.1\r\n\r\n", True),
    ],
)
def test_which_requests_may_be_hijacked(raw, hijack):
    assert parse_request_head(raw).may_hijack is hijack


def test_reader_holds_bytes_after_a_request_until_told_to_go_on():
    reader = RequestReader()
    events = reader.feed(
        b"POST /exec/a/start HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        b"Content-Length: 2\r\n\r\n{}stdin-bytes"
    )
    assert [type(e) for e in events] == [Head, Body, type(END)]
    assert reader.feed(b" more") == []
    assert reader.take_rest() == b"stdin-bytes more"


def test_response_reader_docker_upgrade():
    reader = ResponseReader(b"POST")
    reader.feed(
        b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n\x01\x00\x00\x00"
    )
    assert reader.head.status == 101 and reader.upgraded and reader.hijacked


def test_response_reader_legacy_hijack():
    reader = ResponseReader(b"POST")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\nout")
    assert reader.hijacked and not reader.complete


def test_response_reader_chunked_stream_is_not_a_hijack():
    reader = ResponseReader(b"GET")
    reader.feed(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    assert not reader.hijacked and not reader.complete
    reader.feed(b"0\r\n\r\n")
    assert reader.complete


def test_response_to_head_ends_with_its_head():
    reader = ResponseReader(b"HEAD")
    reader.feed(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Length: 2\r\n\r\n")
    assert reader.complete and reader.head.header(b"api-version") == b"1.41"


def test_interim_100_continue_is_not_the_response():
    reader = ResponseReader(b"POST")
    reader.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert reader.head is None and not reader.complete
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert reader.head.status == 200 and reader.complete


@given(body=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 4000), max_size=6))
def test_response_reader_completes_exactly_at_the_end(body, cuts):
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    reader = ResponseReader(b"GET")
    pieces = split_at(raw, cuts)
    for index, piece in enumerate(pieces):
        reader.feed(piece)
        rest = b"".join(pieces[index + 1:])
        assert reader.complete == (not rest)


def test_garbage_from_the_daemon_is_a_502():
    with pytest.raises(FramingError) as info:
        ResponseReader(b"GET").feed(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert info.value.status == 502


def test_a_body_delimited_by_the_close_completes_at_end_of_stream():
    reader = ResponseReader(b"GET")
    reader.feed(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\": 1}")
    assert reader.head is not None and not reader.complete
    assert reader.end_of_stream() and reader.complete


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"a\"",  # cut short
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n",  # cut short
    b"HTTP/1.1 200 OK\r\nContent-Le",  # no head yet
])
def test_a_response_cut_short_is_not_complete_at_end_of_stream(raw):
    reader = ResponseReader(b"GET")
    reader.feed(raw)
    assert not reader.end_of_stream() and not reader.complete


@settings(max_examples=200)
@given(
    heads=st.lists(st.sampled_from([
        b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\n\r\n",
        b"POST /v1.41/containers/c/start HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1.41/containers/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        b"HEAD /_ping HTTP/1.1\r\n\r\n",
        # After these llhttp is not between messages: the next head needs a fresh parser.
        b"GET /_ping HTTP/1.0\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"POST /v1.41/containers/c/attach?stream=1 HTTP/1.1\r\nConnection: Upgrade\r\n"
        b"Upgrade: tcp\r\n\r\n",
    ]), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=2_000), max_size=6),
)
def test_whole_request_fast_path_reads_the_same_requests_as_feed(heads, cuts):
    stream = b"".join(heads)
    assert run_reader(stream, cuts, whole_first=True) == run_reader(stream, cuts)
    # One read per request, the usual shape of a keep-alive client's traffic.
    assert run_reader(stream, [len(b"".join(heads[:i])) for i in range(len(heads))],
                      whole_first=True) == run_reader(stream, [])


def test_whole_request_takes_only_one_complete_request_without_a_body():
    reader = RequestReader()
    head = reader.whole_request(b"GET /v1.41/info HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.method == b"GET" and head.target == b"/v1.41/info"
    assert head.body_kind is BodyKind.NONE and reader.waiting
    # Waiting for the proxy to finish that request: everything goes to feed, and is held.
    assert reader.whole_request(b"GET /_ping HTTP/1.1\r\n\r\n") is None
    assert reader.feed(b"GET /_ping HTTP/1.1\r\n\r\n") == [] and reader.buffered
    fresh = RequestReader()
    for data in (
        b"POST /build HTTP/1.1\r\nContent-Length: 3\r\n\r\n",  # a body follows
        b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",  # two requests
        b"GET /a HTTP/1.1\r\nHost: x\r\n",  # not complete yet
        b"\r\n\r\n",
        b"\r\nGET /a HTTP/1.1\r\n\r\n",  # a stray CRLF first: feed drops it
    ):
        assert fresh.whole_request(data) is None, data
        assert not fresh.waiting and not fresh.buffered
    with pytest.raises(FramingError):
        fresh.whole_request(b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n")
    with pytest.raises(FramingError):
        fresh.whole_request(b"GET http://x/a HTTP/1.1\r\n\r\n")


def test_whole_request_takes_an_empty_body_and_judges_after_a_closing_request_afresh():
    reader = RequestReader()
    # Go clients (the docker CLI) send a bodiless POST with "Content-Length: 0".
    head = reader.whole_request(b"POST /v1.41/containers/c/start HTTP/1.1\r\n"
                                b"Content-Length: 0\r\n\r\n")
    assert head.method == b"POST" and head.body_kind is BodyKind.NONE
    reader.next_request()
    # After "Connection: close" llhttp refuses more bytes: the next request is judged by a
    # fresh parser, which takes a valid one and refuses a malformed one.
    assert reader.whole_request(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
    reader.next_request()
    assert reader.whole_request(b"GET /b HTTP/1.1\r\n\r\n").target == b"/b"
    reader.next_request()
    assert reader.whole_request(b"GET /c HTTP/1.0\r\n\r\n").target == b"/c"
    reader.next_request()
    with pytest.raises(FramingError):
        reader.whole_request(b"GET /d HTTP/1.1\r\nBad Header\r\n\r\n")


@pytest.mark.parametrize("framing", [b"Content-Length: 27", b"Transfer-Encoding: chunked"])
def test_an_upgrade_request_whose_body_follows_its_head_is_left_to_feed(framing):
    # llhttp (through httptools) skips an upgrade request's body and completes the message at
    # once: the fast path must not take the head for a bodiless request. Reads split so by a
    # client that writes head and body apart (exec start carries a JSON body).
    head = (b"POST /v1.41/exec/abc/start HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            + framing + b"\r\n\r\n")
    body = b'{"Detach":false,"Tty":true}'
    if framing.startswith(b"Transfer"):
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    reader = RequestReader()
    assert reader.whole_request(head) is None and not reader.waiting
    assert run_reader(head + body, [len(head)], whole_first=True) == [
        (b"POST", head, body)]
    without_body = RequestReader().whole_request(
        b"GET /session HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert without_body.upgrade and without_body.body_kind is BodyKind.NONE


def test_fields_of_a_head_read_whole_are_collected_when_asked_for():
    raw = b"GET /v1.41/info HTTP/1.1\r\nHost: x\r\nUser-Agent: Docker-Client/28\r\nX-A: 1\r\n\r\n"
    head = RequestReader().whole_request(raw)
    assert head.headers == [(b"Host", b"x"), (b"User-Agent", b"Docker-Client/28"), (b"X-A", b"1")]
    assert head.header(b"user-agent") == b"Docker-Client/28"
    framed = parse_request_head(raw.replace(b"X-A: 1", b"Content-Length: 0"))
    assert framed.headers[2] == (b"Content-Length", b"0")
    assert framed.body_kind is BodyKind.NONE


def test_a_framing_only_reader_follows_one_response_after_another():
    reader = ResponseReader(headers=False, head=False)
    responses = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 13\r\n\r\n{\"message\":1}",
    ]
    for raw in responses:
        reader.restart()
        for i in range(len(raw) - 1):
            reader.feed(raw[i:i + 1])
            assert not reader.complete, (raw, i)
        reader.feed(raw[-1:])
        assert reader.complete and reader.head is None, raw


def test_bytes_after_a_response_do_not_spoil_the_next_one():
    # Whatever a broken upstream sends past a response's end, the next response on the same
    # reader is read from a clean start.
    reader = ResponseReader(headers=False, head=False)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKX")
    assert reader.complete
    reader.restart()
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
    assert reader.complete
    closing = ResponseReader(headers=False, head=False)
    closing.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    closing.restart()
    closing.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert closing.complete


def test_a_framing_only_reader_notes_the_final_status():
    reader = ResponseReader(b"POST", headers=False)
    reader.feed(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert reader.head is None and not reader.complete
    reader.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert reader.head.status == 201 and reader.head.headers == [] and reader.complete


@pytest.mark.parametrize("raw", [
    b"GET /v1.41/_ping HTTP/1.1\nHost: x\n\n",
    b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\n\n",
    b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\n",
    b"GET /v1.41/_ping HTTP/1.1\n",
])
def test_a_head_with_a_bare_lf_is_refused_not_waited_on(raw):
    """dockerd answers such a request; a proxy that waits for a CRLF CRLF never would."""
    with pytest.raises(FramingError) as refused:
        RequestReader().feed(raw)
    assert refused.value.status == 400 and "bare LF" in str(refused.value)


def test_a_head_sent_a_byte_at_a_time_is_not_taken_for_a_bare_lf():
    reader = RequestReader()
    events = []
    for byte in b"GET /v1.41/_ping HTTP/1.1\r\nHost: x\r\n\r\n":
        events += reader.feed(bytes([byte]))
    assert [type(e).__name__ for e in events] == ["Head", "End"]

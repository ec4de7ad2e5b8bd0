"""HTTP/1.1 message framing for the proxy, without any I/O.

The proxy forwards bytes exactly as they arrived whenever no hook needs to change them, so the
readers here report *where* messages begin and end in the raw byte stream rather than re-encoding
them. llhttp (through httptools) parses and validates request and response heads; the body framing
of requests (Content-Length and chunked) is tracked here because llhttp does not report byte
offsets, and offsets are what a pass-through proxy needs to split pipelined requests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

from powerstrip.core.media import HIJACK_CONTENT_TYPES, last_header, media_type
from powerstrip.core.paths import SpellingError, canonical_path

#: A request head larger than this is refused: dockerd itself caps headers at 1 MiB, and a head
#: that never ends must not grow the proxy's memory without bound.
MAX_HEAD_SIZE = 1024 * 1024

#: A chunk-size line (hex size plus extensions) longer than this is malformed.
MAX_CHUNK_LINE = 4096


class FramingError(Exception):
    """The peer sent bytes that are not valid HTTP/1.1; ``status`` is what to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class BodyKind(enum.Enum):
    """How a request body is delimited."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"


class RequestHead:
    """A parsed request head; ``raw`` is the head exactly as the client sent it."""

    __slots__ = ("method", "target", "raw", "body_kind", "content_length", "upgrade", "_headers")

    def __init__(
        self, method: bytes, target: bytes,
        headers: list[tuple[bytes, bytes]] | None, raw: bytes,
        body_kind: BodyKind = BodyKind.NONE, content_length: int = 0, upgrade: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.raw = raw
        self.body_kind = body_kind
        self.content_length = content_length
        self.upgrade = upgrade
        self._headers = headers

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r}, {self.target!r}, {self.body_kind.name})"

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header fields in order, as sent.

        A head read by ``RequestReader.whole_request`` is validated without collecting its
        fields (a request no hook sees never needs them); they are collected here on first use.
        """
        if self._headers is None:
            self._headers = parse_request_head(self.raw).headers
        return self._headers

    def header(self, name: bytes) -> bytes | None:
        """Return the last value of header ``name`` (case-insensitive), or None."""
        return last_header(self.headers, name)

    @property
    def keep_alive(self) -> bool:
        """Whether the client keeps the connection after this request's answer: not after
        ``Connection: close``, nor after an HTTP/1.0 request without ``keep-alive``."""
        tokens = {token.strip().lower() for name, value in self.headers
                  if name.lower() == b"connection" for token in value.split(b",")}
        if b"close" in tokens:
            return False
        version = self.raw[:self.raw.find(b"\r\n")].rpartition(b" ")[2]
        return version != b"HTTP/1.0" or b"keep-alive" in tokens

    @property
    def path(self) -> bytes:
        """The request target without its query string."""
        return self.target.split(b"?", 1)[0]

    @property
    def may_hijack(self) -> bool:
        """Whether the daemon may take over the connection after answering this request.

        That is any request asking for an upgrade, and the two endpoints that dockerd hijacks even
        without one (attach and exec start), which legacy clients call without an Upgrade header.
        """
        if self.upgrade:
            return True
        if self.method != b"POST":
            return False
        path = self.path
        if b"%" in path:
            # dockerd routes the percent-decoded path: an escaped attach is still an attach.
            try:
                routed = canonical_path(self.target.decode("latin-1"))
            except SpellingError:
                routed = None
            if routed is not None:
                path = routed.encode("utf-8", "surrogateescape")
        return path.endswith(b"/attach") or (b"/exec/" in path and path.endswith(b"/start"))


class _Callbacks:
    """Every callback httptools looks for, absent.

    httptools asks a new parser's target for each callback with ``getattr(target, name, None)``;
    a missing one costs a formatted AttributeError, a dozen of them per request and response.
    Targets define what they use and inherit None for the rest.
    """

    __slots__ = ()

    on_message_begin = on_url = on_status = on_header = on_headers_complete = None
    on_body = on_message_complete = on_chunk_header = on_chunk_complete = None


class _HeadCollector(_Callbacks):
    """httptools callback target collecting one request head."""

    __slots__ = ("url", "headers", "done")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp drops the whitespace before a field value but keeps what follows it, which
        # is no part of the value either (RFC 9110 5.5): Go's dockerd reads "Host: docker \t"
        # as "docker", and hooks must see what the daemon sees.
        self.headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        self.done = True


class _Validator(_Callbacks):
    """httptools callback target that only hears that a message was complete (and valid)."""

    done = False

    def on_message_complete(self) -> None:
        self.done = True


def parse_request_head(raw: bytes) -> RequestHead:
    """Parse and validate one complete request head (ending in CRLF CRLF).

    Raises FramingError for anything llhttp refuses (bad request line, bad header syntax,
    conflicting Content-Length and Transfer-Encoding, ...).
    """
    collector = _HeadCollector()
    parser = httptools.HttpRequestParser(collector)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as exc:
        raise FramingError(f"malformed HTTP request: {exc}") from None
    if not collector.done:
        raise FramingError("malformed HTTP request: incomplete head")
    target = collector.url
    if not target.startswith(b"/"):
        raise FramingError("malformed HTTP request: the target must be an absolute path")
    head = RequestHead(parser.get_method(), target, collector.headers, raw,
                       upgrade=parser.should_upgrade())
    transfer_encoding = head.header(b"transfer-encoding")
    if transfer_encoding is not None:
        # llhttp already refused a Transfer-Encoding whose last coding is not chunked.
        head.body_kind = BodyKind.CHUNKED
    else:
        length = head.header(b"content-length")
        if length is not None:
            head.content_length = int(length)
            if head.content_length:
                head.body_kind = BodyKind.LENGTH
    return head


def has_bare_lf(buffer: bytes | bytearray, start: int = 0) -> bool:
    """Whether a LF not preceded by CR is in ``buffer`` at or after ``start``."""
    newline = buffer.find(b"\n", start)
    while newline >= 0:
        if newline == 0 or buffer[newline - 1] != 13:
            return True
        newline = buffer.find(b"\n", newline + 1)
    return False


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """Return the offset just past the CRLF CRLF that ends a head, or -1 if it is not there yet."""
    end = buffer.find(b"\r\n\r\n", start)
    return -1 if end < 0 else end + 4


class ChunkedTracker:
    """Finds the end of a chunked body in a raw byte stream, validating its framing.

    It never copies or decodes body data: ``feed`` returns how many of the given bytes belong to
    the body, so the caller can forward that slice untouched.
    """

    __slots__ = ("_state", "_remaining", "_line", "done")

    _SIZE, _DATA, _DATA_CR, _DATA_LF, _TRAILER = range(5)

    def __init__(self) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = bytearray()
        self.done = False

    def feed(self, data: bytes | bytearray, start: int = 0) -> int:
        """Consume body bytes from ``data[start:]``; return the offset where the body ended or
        ``len(data)`` if it goes on. Raises FramingError on malformed framing."""
        pos = start
        end = len(data)
        while pos < end and not self.done:
            state = self._state
            if state == self._DATA:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = self._DATA_CR
            elif state == self._SIZE or state == self._TRAILER:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._line += data[pos:end]
                    pos = end
                    if len(self._line) > MAX_CHUNK_LINE:
                        raise FramingError("malformed chunked body: chunk line too long")
                    continue
                self._line += data[pos:newline + 1]
                pos = newline + 1
                line = bytes(self._line)
                self._line.clear()
                if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\r\n"):
                    raise FramingError("malformed chunked body: bad line ending")
                if state == self._SIZE:
                    self._start_chunk(line[:-2])
                elif line == b"\r\n":
                    self.done = True
            elif state == self._DATA_CR:
                if data[pos] != 13:
                    raise FramingError("malformed chunked body: chunk data not followed by CRLF")
                pos += 1
                self._state = self._DATA_LF
            else:
                if data[pos] != 10:
                    raise FramingError("malformed chunked body: chunk data not followed by CRLF")
                pos += 1
                self._state = self._SIZE
        return pos

    def _start_chunk(self, line: bytes) -> None:
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if not size_text or len(size_text) > 16 or any(
            c not in b"0123456789abcdefABCDEF" for c in size_text
        ):
            raise FramingError(f"malformed chunked body: bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size:
            self._remaining = size
            self._state = self._DATA
        else:
            self._state = self._TRAILER


class Head:
    """Event: a request head was parsed."""

    __slots__ = ("head",)

    def __init__(self, head: RequestHead) -> None:
        self.head = head


class Body:
    """Event: raw body bytes of the current request, framing included."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class End:
    """Event: the current request is complete."""

    __slots__ = ()


END = End()

Event = Head | Body | End


class RequestReader:
    """Splits a client's byte stream into requests, one at a time.

    After each complete request the reader holds: ``feed`` only buffers until ``next_request``
    is called, because the proxy answers pipelined requests strictly in order, and because a
    request that may be hijacked must not have the bytes that follow it parsed as HTTP until the
    daemon's answer shows whether the connection switched protocols.
    """

    def __init__(self, max_head: int = MAX_HEAD_SIZE) -> None:
        self._buffer = bytearray()
        self._max_head = max_head
        self._in_body = False
        self._remaining = 0
        self._chunked: ChunkedTracker | None = None
        self.waiting = False
        #: A parser and its callback target kept for ``whole_request``, one per connection.
        self._quick: tuple[httptools.HttpRequestParser, _Validator] | None = None
        #: Where the search for a bare LF in an unfinished head goes on.
        self._lf_from = 0

    @property
    def buffered(self) -> int:
        """How many received bytes are held, not yet turned into events."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Event]:
        """Take bytes from the client; return the events they complete."""
        if self.waiting:
            self._buffer += data
            return []
        if not self._buffer and self._in_body and self._chunked is None:
            # Fast path for large Content-Length bodies: no copying into the buffer.
            return self._length_body(data)
        self._buffer += data
        return self._drain()

    def whole_request(self, data: bytes) -> RequestHead | None:
        """The common case, cheaply: if the reader is between requests with nothing held and
        ``data`` is exactly one complete request without a body (or with an empty one, as Go
        clients send a bodiless POST), parse it where it lies and return its head (the reader
        then waits, as after an END event). Otherwise return None and change nothing: ``feed``
        takes the data. Raises FramingError as ``feed`` would."""
        if (self.waiting or self._buffer or self._in_body or len(data) <= 4
                or data.find(b"\r\n\r\n") != len(data) - 4 or data[:2] == b"\r\n"):
            return None
        # llhttp validates the request; method and target are read off the request line it
        # accepted, which spares the parser's Python callback for the target. The data ends
        # with the head, so llhttp completes the message only if no body follows the head.
        parts = data[:data.find(b"\r\n")].split()
        head = None
        if len(parts) == 3 and parts[1][:1] == b"/":
            quick = self._quick
            if quick is None:
                validator = _Validator()
                parser = httptools.HttpRequestParser(validator)
            else:
                parser, validator = quick
                validator.done = False
            self._quick = None
            upgrade = failed = False
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                upgrade = True
            except httptools.HttpParserError:
                failed = True  # a fresh parser below says what is wrong (a reused one may err)
            # httptools has llhttp skip the body of an upgrade request, so its message
            # completes even when a body follows: the fresh parse below tells.
            if validator.done and not upgrade:
                head = RequestHead(parts[0], parts[1], None, data)
                # llhttp is between messages. After one that ends the connection (HTTP/1.0,
                # Connection: close) it refuses what follows; the fresh parse then judges.
                self._quick = (parser, validator)
            elif not failed and not upgrade:
                return None  # a valid head, and a body follows: feed takes it
        if head is None:
            head = parse_request_head(data)
            if head.body_kind is not BodyKind.NONE:
                return None
        self.waiting = True
        return head

    def next_request(self) -> list[Event]:
        """Let the reader go on to the next request after the current one completed."""
        self.waiting = False
        return self._drain() if self._buffer else []

    def take_rest(self) -> bytes:
        """Give up HTTP on this connection (it was hijacked): return and forget the held bytes."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def _length_body(self, data: bytes) -> list[Event]:
        take = self._remaining
        if len(data) < take:
            self._remaining -= len(data)
            return [Body(data)]
        self._in_body = False
        self._remaining = 0
        self.waiting = True
        events: list[Event] = [Body(data[:take]), END] if take else [END]
        if take < len(data):
            self._buffer += data[take:]
        return events

    def _drain(self) -> list[Event]:
        events: list[Event] = []
        buffer = self._buffer
        while buffer and not self.waiting:
            if self._in_body:
                if self._chunked is not None:
                    end = self._chunked.feed(buffer)
                    events.append(Body(bytes(buffer[:end])))
                    del buffer[:end]
                    if self._chunked.done:
                        self._chunked = None
                        self._finish(events)
                    continue
                data = bytes(buffer)
                buffer.clear()
                events.extend(self._length_body(data))
                continue
            # Clients may send stray CRLFs between requests (RFC 9112 2.2).
            while buffer[:2] == b"\r\n":
                del buffer[:2]
                self._lf_from = 0
            end = find_head_end(buffer)
            if end < 0:
                # A head whose lines end in a bare LF never shows the CRLF CRLF that ends a
                # head: refused now rather than waited on. (Only the bytes not yet looked at
                # are scanned, so a head sent a byte at a time costs no more than one sent
                # whole.)
                if has_bare_lf(buffer, self._lf_from):
                    raise FramingError("malformed HTTP request: a line of the head ends in a "
                                       "bare LF; HTTP/1.1 lines end in CRLF")
                self._lf_from = len(buffer)
                if len(buffer) > self._max_head:
                    raise FramingError("request head too large", 431)
                break
            self._lf_from = 0
            head = parse_request_head(bytes(buffer[:end]))
            del buffer[:end]
            self._begin(head, events)
        return events

    def _begin(self, head: RequestHead, events: list[Event]) -> None:
        events.append(Head(head))
        if head.body_kind is BodyKind.LENGTH:
            self._in_body = True
            self._remaining = head.content_length
        elif head.body_kind is BodyKind.CHUNKED:
            self._in_body = True
            self._chunked = ChunkedTracker()
        else:
            self._finish(events)

    def _finish(self, events: list[Event]) -> None:
        self._in_body = False
        self.waiting = True
        events.append(END)


@dataclass(slots=True)
class ResponseHead:
    """The parsed head of a daemon response."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        """Return the last value of header ``name`` (case-insensitive), or None."""
        return last_header(self.headers, name)

    @property
    def content_type(self) -> bytes | None:
        """The media type without parameters, or None (see ``media.media_type``)."""
        return media_type(last_header(self.headers, b"content-type"))


class _FramingOnly(_Callbacks):
    """httptools callback target that ignores headers, for responses nobody inspects."""

    __slots__ = ("on_message_begin", "on_headers_complete", "on_message_complete")

    def __init__(self, reader: ResponseReader) -> None:
        self.on_message_begin = reader.on_message_begin
        self.on_headers_complete = reader.on_headers_complete
        self.on_message_complete = reader.on_message_complete


class _CompletionOnly(_Callbacks):
    """httptools callback target that only hears where a response ends."""

    __slots__ = ("on_message_complete",)

    def __init__(self, reader: ResponseReader) -> None:
        self.on_message_complete = reader.on_unseen_message_complete


class ResponseReader(_Callbacks):
    """Follows one daemon response through the raw byte stream.

    The proxy forwards the daemon's bytes unchanged; this reader only tells it when the head is
    complete, when the response is complete, and whether the connection switched protocols.
    ``feed`` returns the offset in ``data`` where the response (and so the HTTP part of the
    stream) ended, or None while it goes on.
    """

    def __init__(
        self, request_method: bytes = b"GET", *, headers: bool = True, head: bool = True,
    ) -> None:
        """With ``headers=False`` the reader only frames the response and notes its status
        (``head`` has no fields); llhttp still validates every header, without a Python call
        for each, which is all a response nobody inspects needs. With ``head=False`` as well it
        only hears where each response ends (``head`` stays None): the reader one connection's
        plain responses share (see ``restart``)."""
        self._head_only = request_method == b"HEAD"
        if headers:
            target: object = self
        elif head or self._head_only:
            target = _FramingOnly(self)
        else:
            target = _CompletionOnly(self)
        self._target = target
        self._parser = httptools.HttpResponseParser(target)
        self._renew = False
        self._headers: list[tuple[bytes, bytes]] = []
        self.head: ResponseHead | None = None
        self.complete = False
        self.upgraded = False
        self._final = False
        #: Part of a message (interim or final) has been read and not its end. (Not followed by
        #: the reader one connection's plain responses share.)
        self.in_message = False

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.in_message = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value.rstrip(b" \t")))  # as _HeadCollector.on_header

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim response (100 Continue): the final one follows.
            self._headers = []
            return
        self._final = True
        self.head = ResponseHead(status, self._headers)
        if self._head_only:
            self.complete = True

    def on_message_complete(self) -> None:
        self.in_message = False
        if self._final:
            self.complete = True

    @property
    def status(self) -> int | None:
        """The final response's status: from its head, or for a framing-only reader from
        llhttp, which keeps it until the next response begins; None before any."""
        if self.head is not None:
            return self.head.status
        parser = self._parser
        return (parser.get_status_code() or None) if parser is not None else None

    def release(self) -> None:
        """Nothing more will be read: drop the parser, which holds this reader through its
        callbacks (a cycle only the garbage collector would otherwise free)."""
        self._parser = None  # type: ignore[assignment]
        self._target = None

    def restart(self) -> ResponseReader:
        """Follow the next response on the same connection (a framing-only reader, after a
        complete response that was not a HEAD's): llhttp is already between messages, unless
        the last response said the connection ends (then a fresh parser takes over)."""
        self.complete = False
        if self._renew:
            self._renew = False
            self._parser = httptools.HttpResponseParser(self._target)
        return self

    def on_unseen_message_complete(self) -> None:
        # The head was not looked at: an interim response (100 Continue) is told apart here.
        parser = self._parser
        status = parser.get_status_code()
        if status >= 200 or status < 100 or status == 101:
            self.complete = True
            # After "Connection: close" llhttp refuses any further byte; a daemon that keeps
            # the connection open anyway gets a fresh parser for its next response.
            self._renew = not parser.should_keep_alive()

    def feed(self, data: bytes) -> None:
        """Take bytes from the daemon. Raises FramingError if they are not HTTP."""
        if self.complete:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True
            self.complete = True
        except httptools.HttpParserCallbackError:
            raise
        except httptools.HttpParserError as exc:
            if self.complete:
                # Bytes after the response's end (after a HEAD response's head, the parser saw
                # them as a body): not this response's. A fresh parser for the next one.
                self._parser = httptools.HttpResponseParser(self._target)
                return
            raise FramingError(f"malformed HTTP response from the daemon: {exc}", 502) from None

    def end_of_stream(self) -> bool:
        """The daemon closed the connection: if that is how this response's body ends (no
        length, not chunked, as for an HTTP/1.0 client), mark it complete. Returns whether the
        response is complete now."""
        head = self.head
        if self.complete or head is None:
            return self.complete
        if (head.header(b"content-length") is None
                and head.header(b"transfer-encoding") is None
                and head.status not in (204, 304)):
            self.complete = True
        return self.complete

    @property
    def hijacked(self) -> bool:
        """Whether the daemon took the connection over (101, or a legacy 200 raw stream)."""
        if self.upgraded:
            return True
        head = self.head
        return (
            head is not None
            and head.status == 200
            and head.content_type in HIJACK_CONTENT_TYPES
            and head.header(b"content-length") is None
            and head.header(b"transfer-encoding") is None
        )


class CollectingResponseReader(ResponseReader):
    """A ResponseReader that also keeps the decoded body, for post-hooks."""

    def __init__(self, request_method: bytes = b"GET") -> None:
        super().__init__(request_method, headers=True)
        self.body = bytearray()

    def on_body(self, data: bytes) -> None:
        self.body += data


def decode_chunked(raw: bytes) -> bytes:
    """The payload of a complete chunked body (trailers dropped)."""
    out = bytearray()
    pos = 0
    while True:
        line_end = raw.index(b"\r\n", pos)
        size = int(raw[pos:line_end].split(b";", 1)[0].strip(), 16)
        if size == 0:
            return bytes(out)
        start = line_end + 2
        out += raw[start:start + size]
        pos = start + size + 2


_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")


def build_request_head(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
    body_length: int | None,
) -> bytes:
    """A request head with a new request line; with ``body_length`` the body framing headers
    are replaced by a Content-Length (the body was rewritten), else they are kept as they are."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    for name, value in headers:
        if body_length is not None and name.lower() in _FRAMING_HEADERS:
            continue
        lines.append(name + b": " + value)
    if body_length is not None and (body_length or method not in (b"GET", b"HEAD")):
        lines.append(b"Content-Length: %d" % body_length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def build_response(
    status: int, headers: list[tuple[bytes, bytes]], content_type: bytes | None, body: bytes,
    *, head_only: bool = False,
) -> bytes:
    """A complete response with a Content-Length, from the daemon's headers and a new
    status, Content-Type and body."""
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b"Unknown"
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    for name, value in headers:
        if name.lower() in _FRAMING_HEADERS or name.lower() == b"content-type":
            continue
        lines.append(name + b": " + value)
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type)
    if status in (204, 304):
        # These never carry a body (RFC 9110); a client would read the bytes as the next
        # response.
        body = b""
    else:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head_only else body)

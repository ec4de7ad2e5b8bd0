"""The exchange state machine (``powerstrip.core.exchange``) without sockets or a daemon.

A recording ``Effects`` stands in for the driver. Hypothesis drives random event sequences —
pipelined requests with and without hooks, JSON bodies by length and chunked, hook approvals,
rewrites, refusals and failures, daemon answers cut into pieces, EOFs from both ends, hijacks,
shutdown and its deadline — and checks after every step what the proxy promises:

- every request read whole gets exactly one answer, in order, or the connection is closed;
- no byte of a request reaches the daemon before its pre-hooks approved it;
- nothing is sent after a close;
- a body held for hooks never exceeds its limit;
- once every hook and the daemon have answered, nothing is left open and silent.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from powerstrip.core.exchange import (
    PIPELINE_HIGH_WATER,
    REQUEST_TABLE,
    RESPONSE_TABLE,
    Machine,
    RequestState,
    ResponseState,
)
from powerstrip.core.paths import SpellingError
from powerstrip.hooks.wire import ClientRequest, ServerResponse

MAX_BODY = 600
#: Rules that end a connection act about one time in six (sampled, not drawn as an
#: integer, which Hypothesis would often draw at its bound).
ENDINGS = st.sampled_from([False] * 5 + [True])


# -- fakes --------------------------------------------------------------------------------


@dataclass
class FakeConfig:
    max_body: int = MAX_BODY


@dataclass
class FakePlan:
    pre: tuple
    post: tuple
    config: FakeConfig = field(default_factory=FakeConfig)
    endpoints: str = '"* /hooked"'


class FakeHooks:
    """A request's ``hooks`` query parameter names its hooks (``pre``, ``post``, ``both``); a
    target under ``/bad/`` is a spelling dockerd would refuse."""

    active = True

    def plan(self, method: bytes, target: bytes) -> FakePlan | None:
        if target.startswith(b"/bad/"):
            raise SpellingError("a path dockerd refuses")
        hooks = target.partition(b"hooks=")[2]
        if hooks == b"pre":
            return FakePlan(("a",), ())
        if hooks == b"post":
            return FakePlan((), ("a",))
        if hooks == b"both":
            return FakePlan(("a",), ("b",))
        return None


class Recorder:
    """The driver's side: what the machine asked for, and any action after a close."""

    def __init__(self) -> None:
        self.daemon = bytearray()  # bytes sent on the current daemon connection
        self.daemon_all = bytearray()  # on every daemon connection, in order
        self.client = bytearray()
        self.closed = False
        self.lingered = False
        self.aborted = False
        self.after_close: list[str] = []
        self.paused: set[str] = set()
        self.pre_calls: list = []
        self.post_calls: list = []
        self.daemon_half_closed = False
        self.client_half_closed = False
        self.daemon_closed = False

    def _check(self, what: str) -> None:
        if self.closed or self.aborted:
            self.after_close.append(what)

    def to_daemon(self, data: bytes) -> None:
        self._check("to_daemon")
        self.daemon += data
        self.daemon_all += data

    def to_client(self, data: bytes) -> None:
        self._check("to_client")
        self.client += data

    def half_close_daemon(self) -> None:
        self.daemon_half_closed = True

    def half_close_client(self) -> None:
        self.client_half_closed = True

    def close_daemon(self) -> None:
        self.daemon_closed = True

    def close(self) -> None:
        self.closed = True

    def close_lingering(self) -> None:
        self.closed = True
        self.lingered = True

    def abort(self) -> None:
        self.aborted = True

    def pause(self, reason: str) -> None:
        self.paused.add(reason)

    def resume(self, reason: str) -> None:
        self.paused.discard(reason)

    def call_pre_hooks(self, exchange: object, request: ClientRequest) -> None:
        self._check("call_pre_hooks")
        self.pre_calls.append((exchange, request))

    def call_post_hooks(self, exchange: object, request: ClientRequest,
                        response: ServerResponse) -> None:
        self._check("call_post_hooks")
        self.post_calls.append((exchange, request, response))

    def expect_soon(self) -> None:
        pass


# -- wire helpers -------------------------------------------------------------------------


#: Each kind of request: its target, with ``{seq}`` for its sequence number.
TARGETS = {
    "plain": "/v1.41/plain/{seq}",
    "pre": "/v1.41/x/{seq}?hooks=pre",
    "post": "/v1.41/x/{seq}?hooks=post",
    "both": "/v1.41/x/{seq}?hooks=both",
    "bad": "/bad/{seq}",
    # Streams: answered chunked, a piece at a time; post-hooks never hold them.
    "stream": "/v1.41/containers/{seq}/logs?follow=1",
    "poststream": "/v1.41/containers/{seq}/logs?follow=1&hooks=post",
}
STREAMS = ("stream", "poststream")
#: No body, a small JSON body, and one over the hooks' limit (MAX_BODY).
#: How much of a new request the client sends at once: all of it, none yet, its first bytes,
#: or all but its last bytes (a body cut short).
CUTS = st.sampled_from([10_000, 0, 7, 60, -3, -40])
BODIES = st.sampled_from(["", '{"Image": "busybox"}', '{"a": "' + "x" * 700 + '"}'])


def make_request(seq: int, kind: str, body: str, chunked: bool) -> bytes:
    """A request carrying its sequence number in ``X-Seq``."""
    if kind == "attach":
        return (f"POST /v1.41/containers/c/attach?stream=1 HTTP/1.1\r\nHost: x\r\nX-Seq: {seq}"
                "\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n").encode()
    method = "GET" if body == "" else "POST"
    target = TARGETS[kind].format(seq=seq)
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nX-Seq: {seq}\r\n"
    if body == "":
        return (head + "\r\n").encode()
    payload = body.encode()
    if chunked:
        half = len(payload) // 2
        parts = [payload[:half], payload[half:]]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
        return (head + "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                ).encode() + framed
    return (head + f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            ).encode() + payload


def daemon_answer(seq: int, stream: bool = False) -> bytes:
    """The daemon's answer to request ``seq``: by length, or chunked as streams are."""
    body = json.dumps({"seq": seq}).encode()
    if stream:
        half = len(body) // 2
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
                % (half, body[:half], len(body) - half, body[half:]))
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(body)) + body


class _Requests:
    """httptools target: the X-Seq of every complete request in a byte stream."""

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.partial: int | None = None
        self._name = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-seq":
            self.partial = int(value)

    def on_message_complete(self) -> None:
        self.seqs.append(self.partial)
        self.partial = None


def requests_in(stream: bytes) -> tuple[list[int], int | None]:
    """The sequence numbers of the requests whole in ``stream``, and of one begun after them."""
    target = _Requests()
    parser = httptools.HttpRequestParser(target)
    try:
        parser.feed_data(bytes(stream))
    except httptools.HttpParserUpgrade:
        pass
    return target.seqs, target.partial


class _Responses:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.statuses: list[int] = []
        self._body = b""
        self.parser: httptools.HttpResponseParser | None = None

    def on_body(self, data: bytes) -> None:
        self._body += data

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())

    def on_message_complete(self) -> None:
        self.bodies.append(self._body)
        self._body = b""


def responses_in(stream: bytes) -> list[tuple[int, object]]:
    """(status, what it answers) for every complete response in ``stream``: an ``int`` sequence
    number for the daemon's answers, the message for the proxy's own errors."""
    target = _Responses()
    parser = httptools.HttpResponseParser(target)
    target.parser = parser
    try:
        parser.feed_data(bytes(stream))
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        pass  # after a Connection: close answer llhttp refuses more; nothing more was owed
    out = []
    for status, body in zip(target.statuses, target.bodies, strict=False):
        document = json.loads(body) if body else {}
        out.append((status, document.get("seq", document.get("message"))))
    return out


# -- the state machine test ---------------------------------------------------------------


class ExchangeMachine(RuleBasedStateMachine):
    """Random event sequences against one client connection."""

    @initialize(first=st.lists(st.tuples(st.sampled_from([*TARGETS, "attach"]), BODIES,
                                         st.booleans(), CUTS), min_size=1, max_size=3))
    def start(self, first: list[tuple[str, str, bool, int]]) -> None:
        """A connection whose client has sent its first requests (pipelined when several)."""
        self.fx = Recorder()
        #: (exchange, status) of every report, in order: kept, so no two are the same object.
        self.reports: list[tuple[object, int]] = []
        self.machine = Machine(self.fx, FakeHooks(), "unix:///daemon.sock",
                               clock=lambda: 0.0,
                               report=lambda exchange, status: self.reports.append(
                                   (exchange, status)))
        self.sent: list[tuple[int, str]] = []  # (seq, kind) of every request sent whole
        self.unsent = b""  # bytes of requests the client has yet to send
        self.approved: set[int] = set()
        self.answered_by_daemon: set[int] = set()
        self.hijacked_at: int | None = None
        self.client_eof = False
        self.daemon_eof = False
        self.next_seq = 0
        self.refused: set[int] = set()
        self.upgrade_queued = False
        self.stopping = False
        #: The rest of an answer the daemon has begun.
        self.daemon_unsent: list[bytes] = []
        #: The request whose 101 the daemon is sending.
        self.upgrading: int | None = None
        #: Whether the daemon connection has answered (so it was made).
        self.connected = False
        for kind, body, chunked, cut in first:
            if not self.upgrade_queued:
                self.client_queues_request(kind, body, chunked, cut)

    # Client rules

    @rule(kind=st.sampled_from([*TARGETS, "attach"]),
          body=BODIES,
          chunked=st.booleans(), cut=CUTS)
    @precondition(lambda self: not self.client_eof and not self.upgrade_queued)
    def client_queues_request(self, kind: str, body: str, chunked: bool, cut: int) -> None:
        """A request: sent at once, or in part (the first ``cut`` bytes, or all but the last
        ``-cut``), or only queued (0)."""
        # Nothing is pipelined after an upgrade request: what follows it is raw or nothing.
        self.upgrade_queued = kind == "attach"
        seq = self.next_seq
        self.next_seq += 1
        self.sent.append((seq, kind))
        request = make_request(seq, kind, body, chunked)
        self.unsent += request
        if cut < 0:
            cut += len(self.unsent)  # all but the last bytes: a body cut short
        if cut > 0:
            self.client_sends(cut)

    @rule(size=st.integers(min_value=1, max_value=400))
    @precondition(lambda self: self.unsent and not self.client_eof)
    def client_sends(self, size: int) -> None:
        if self.fx.paused - {"flow"}:
            return  # a paused transport delivers nothing
        piece, self.unsent = self.unsent[:size], self.unsent[size:]
        self.machine.client_data(piece)

    @rule(chance=ENDINGS)
    @precondition(lambda self: not self.client_eof)
    def client_half_closes(self, chance: bool) -> None:
        if not chance:
            return  # endings are rare, or most runs would end in a few steps
        self.client_eof = True
        self.machine.client_ended()

    @rule(data=st.binary(min_size=1, max_size=20))
    @precondition(lambda self: self.hijacked_at is not None and not self.client_eof)
    def client_sends_raw(self, data: bytes) -> None:
        before = len(self.fx.daemon)
        self.machine.client_data(data)
        if not (self.fx.closed or self.fx.aborted):
            assert bytes(self.fx.daemon[before:]) == data

    # Hook rules

    @rule(change=st.booleans())
    @precondition(lambda self: self.fx.pre_calls)
    def pre_hooks_approve(self, change: bool) -> None:
        exchange, request = self.fx.pre_calls.pop(0)
        self.approved.add(int(exchange.head.header(b"x-seq")))
        if change and request.body is not None:
            # As the wire reads an answer: what it does not change (the headers) it keeps.
            request = dataclasses.replace(request, body='{"Image": "changed"}')
        self.machine.pre_hooks_done(exchange, request)

    @rule(status=st.sampled_from([403, 502, 504]))
    @precondition(lambda self: self.fx.pre_calls or self.fx.post_calls)
    def hooks_fail(self, status: int) -> None:
        calls = self.fx.pre_calls or self.fx.post_calls
        exchange = calls.pop(0)[0]
        self.refused.add(int(exchange.head.header(b"x-seq")))
        event("a hook failed")
        self.machine.hooks_failed(exchange, status, f"refused by adapter (status {status})")

    @rule()
    @precondition(lambda self: self.fx.post_calls)
    def post_hooks_answer(self) -> None:
        exchange, _request, response = self.fx.post_calls.pop(0)
        self.machine.post_hooks_done(exchange, response)

    # Daemon rules

    def _owed(self) -> list[int]:
        whole, _ = requests_in(self.fx.daemon)
        return [seq for seq in whole if seq not in self.answered_by_daemon]

    @rule(pieces=st.integers(min_value=1, max_value=4))
    @precondition(lambda self: self.hijacked_at is None and not self.daemon_eof
                  and not self.daemon_unsent)
    def daemon_answers(self, pieces: int) -> None:
        """The daemon answers the oldest request it has whole: the first of ``pieces`` now,
        the rest in ``daemon_continues``."""
        owed = self._owed()
        if not owed:
            return
        seq = owed[0]
        self.answered_by_daemon.add(seq)
        self.connected = True
        kind = dict(self.sent)[seq]
        if kind == "attach":
            answer = b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            self.upgrading = seq
            event("hijacked")
        else:
            answer = daemon_answer(seq, stream=kind in STREAMS)
            event(f"daemon answered {kind}")
        step = max(1, len(answer) // pieces)
        self.daemon_unsent = [answer[start:start + step] for start in range(0, len(answer), step)]
        self.daemon_continues()

    @rule()
    @precondition(lambda self: self.daemon_unsent and not self.daemon_eof)
    def daemon_continues(self) -> None:
        self.machine.daemon_data(self.daemon_unsent.pop(0))
        if not self.daemon_unsent and self.upgrading is not None:
            self.hijacked_at, self.upgrading = self.upgrading, None  # the whole 101 is out

    @rule()
    @precondition(lambda self: self.hijacked_at is None and not self.daemon_eof
                  and requests_in(self.fx.daemon)[1] is not None)
    def daemon_answers_early(self) -> None:
        """The daemon answers a request whose body has not all arrived (as it may refuse one
        it has read enough of)."""
        seq = requests_in(self.fx.daemon)[1]
        if (seq in self.answered_by_daemon or dict(self.sent).get(seq) == "attach"
                or self.daemon_unsent):
            return
        self.answered_by_daemon.add(seq)
        self.connected = True
        self.machine.daemon_data(daemon_answer(seq))

    @rule(chance=ENDINGS)
    @precondition(lambda self: self.hijacked_at is None and not self.daemon_eof)
    def daemon_sends_unasked(self, chance: bool) -> None:
        """Bytes the daemon sends with no request owed an answer are for nobody."""
        if (not chance or self._owed() or self.daemon_unsent
                or requests_in(self.fx.daemon)[1] is not None):
            return  # (a request begun may be answered early: see daemon_answers_early)
        self.machine.daemon_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    @rule(data=st.binary(min_size=1, max_size=20))
    @precondition(lambda self: self.hijacked_at is not None and not self.daemon_eof)
    def daemon_sends_raw(self, data: bytes) -> None:
        before = len(self.fx.client)
        self.machine.daemon_data(data)
        if not (self.fx.closed or self.fx.aborted):
            assert bytes(self.fx.client[before:]) == data

    @rule(chance=ENDINGS)
    @precondition(lambda self: not self.daemon_eof)
    def daemon_half_closes(self, chance: bool) -> None:
        if not chance:
            return  # endings are rare, or most runs would end in a few steps
        self.daemon_eof = True
        self.machine.daemon_ended()
        if self.fx.daemon_closed:
            # The driver closed the daemon connection as asked: its loss follows.
            self.fx.daemon_closed = False
            self.daemon_goes(True)

    @rule(chance=ENDINGS)
    def daemon_goes(self, chance: bool) -> None:
        if not chance:
            return  # endings are rare, or most runs would end in a few steps
        self.machine.daemon_gone()
        # The driver opens a new connection for the next bytes to the daemon.
        for seq in self._owed():
            self.answered_by_daemon.add(seq)  # lost with the connection
        self.fx.daemon = bytearray()
        self.daemon_unsent = []
        self.upgrading = None
        self.connected = False
        self.fx.daemon_half_closed = False
        self.daemon_eof = False

    @rule(chance=ENDINGS)
    @precondition(lambda self: self.fx.daemon and not self.connected)
    def daemon_cannot_be_reached(self, chance: bool) -> None:
        """The connection the machine's first bytes opened fails instead of being made."""
        if not chance:
            return
        self.machine.daemon_unreachable("connection refused")
        self.fx.daemon = bytearray()

    @rule(chance=ENDINGS, which=st.sampled_from(["head", "idle"]))
    def a_timer_fires(self, chance: bool, which: str) -> None:
        """The driver's head or idle timer, in whatever state (it fires only between
        requests; the machine must hold to that too)."""
        if not chance:
            return
        if which == "head":
            self.machine.head_timeout(30.0)
        else:
            self.machine.idle_timeout(300.0)

    @rule(chance=ENDINGS)
    def client_goes(self, chance: bool) -> None:
        """The client's connection is lost: nothing may be sent or called after it."""
        if not chance:
            return
        self.machine.client_gone()
        self.fx.closed = True

    # The proxy

    @rule(chance=ENDINGS)
    def proxy_stops(self, chance: bool) -> None:
        if not chance:
            return  # endings are rare, or most runs would end in a few steps
        self.stopping = True
        self.machine.shutdown()

    @rule(chance=ENDINGS)
    def shutdown_grace_ends(self, chance: bool) -> None:
        if not chance:
            return  # endings are rare, or most runs would end in a few steps
        self.machine.deadline(5.0)

    # Invariants

    def _ended(self) -> bool:
        return self.fx.closed or self.fx.aborted

    @invariant()
    def nothing_after_close(self) -> None:
        assert not self.fx.after_close, f"acted after closing: {self.fx.after_close}"
        if self._ended():
            assert self.machine.closed

    @invariant()
    def no_byte_before_approval(self) -> None:
        kinds = dict(self.sent)
        whole, partial = requests_in(self.fx.daemon_all)
        for seq in [*whole, partial]:
            if seq is not None and kinds.get(seq) in ("pre", "both"):
                assert seq in self.approved, f"request {seq} reached the daemon unapproved"
        for seq in self.refused:
            if kinds.get(seq) in ("pre", "both") and seq not in self.approved:
                assert seq not in whole

    @invariant()
    def daemon_hears_the_end_of_input(self) -> None:
        # Once a request is on its way to the daemon, the client's half-close follows it, as
        # it would direct (how dockerd learns nobody reads a stream any more).
        # (While the daemon still owes the answer: once it has given it, its connection may be
        # gone, and there is nothing to half-close.)
        if (self.client_eof and not self.machine.reader.buffered  # (pipelined ones go first)
                and self.machine.request_state in (RequestState.SENDING, RequestState.DONE)
                and self.machine.response_state in (ResponseState.WAITING,
                                                    ResponseState.STREAMING,
                                                    ResponseState.COLLECTING)):
            assert self.fx.daemon_half_closed

    @invariant()
    def held_body_within_limit(self) -> None:
        exchange = self.machine.exchange
        if exchange is None or self.machine.closed:
            return
        if exchange.buffer_json:
            assert exchange.held_size <= MAX_BODY + 1024
        else:
            assert exchange.held_size <= PIPELINE_HIGH_WATER + 400

    @invariant()
    def answers_in_order(self) -> None:
        answers = responses_in(self.fx.client)
        order = [seq for seq, _ in self.sent]
        assert len(answers) <= len(order)
        for (status, what), seq in zip(answers, order, strict=False):
            if isinstance(what, int):
                assert what == seq, f"answer for {what} where {seq}'s was due"
                assert status == 200
            elif status == 101:
                assert dict(self.sent)[seq] == "attach"
            else:
                assert status >= 400, (status, what)

    def each_exchange_reported_once_with_the_status_sent(self) -> None:
        """(Checked when the connection settles: parsing what the client got at every step
        would double this test's time.)"""
        exchanges = [id(exchange) for exchange, _ in self.reports]
        assert len(set(exchanges)) == len(exchanges), "an exchange reported twice"
        assert len(self.reports) <= self.machine.started
        answers = responses_in(self.fx.client)
        for (status, _), (_, reported) in zip(answers, self.reports, strict=False):
            assert reported == status, (answers, [s for _, s in self.reports])

    def teardown(self) -> None:
        """Settle: every hook and the daemon answer; then nothing may be open and silent."""
        event(f"requests sent: {min(len(self.sent), 5)}{'+' if len(self.sent) > 5 else ''}")
        for _ in range(200):
            if self._ended() or self.hijacked_at is not None:
                break
            progressed = False
            if self.unsent and not (self.fx.paused - {"flow"}) and not self.client_eof:
                self.client_sends(len(self.unsent))
                progressed = True
            if self.fx.pre_calls:
                self.pre_hooks_approve(False)
                progressed = True
            elif self.fx.post_calls:
                self.post_hooks_answer()
                progressed = True
            elif self.daemon_unsent and not self.daemon_eof:
                self.daemon_continues()
                progressed = True
            elif self._owed() and not self.daemon_eof:
                self.daemon_answers(1)
                progressed = True
            elif self.fx.daemon_half_closed:
                # The daemon, its input ended and nothing owed, closes (as Go's server does).
                self.daemon_goes(True)
                progressed = True
            if not progressed:
                break
        self.nothing_after_close()
        self.answers_in_order()
        self.each_exchange_reported_once_with_the_status_sent()
        if self._ended():
            # However it ended, every exchange that began was reported.
            assert len(self.reports) == self.machine.started, (
                self.machine.started, [s for _, s in self.reports])
        if self._ended() or self.hijacked_at is not None:
            return
        answers = responses_in(self.fx.client)
        if not self.unsent:
            # Everything the client sent was read and settled: each request has its answer.
            assert len(answers) == len(self.sent), (answers, self.sent)
            assert len(self.reports) == len(answers), (answers, self.reports)
        if self.client_eof:
            assert self._ended(), "the client ended and was answered: the connection closes"
        if self.stopping:
            assert self._ended(), "the proxy stops: a settled connection closes"


@contextmanager
def recording(visited: set[tuple[str, str]]) -> Iterator[None]:
    """Note every (event, state) whose handler runs while inside."""
    saved = []
    for table in (REQUEST_TABLE, RESPONSE_TABLE):
        for name, handlers in table.items():
            for state, handler in list(handlers.items()):
                saved.append((handlers, state, handler))

                def noted(*args: object, _key: tuple = (name, state.name),
                          _handler: object = handler) -> object:
                    visited.add(_key)
                    return _handler(*args)

                handlers[state] = noted
    try:
        yield
    finally:
        for handlers, state, handler in saved:
            handlers[state] = handler


def test_exchange_machine():
    """Random event sequences keep every promise. (Which (event, state) pairs they reached is
    in the statistics; ``test_every_event_in_every_state`` reaches each one on purpose.)"""
    run_state_machine_as_test(ExchangeMachine, settings=settings(
        max_examples=1000, stateful_step_count=50, deadline=None, database=None,
        derandomize=True,  # the same sequences every run
        suppress_health_check=[HealthCheck.too_slow]))


# -- every event in every state -----------------------------------------------------------


def _post_request(seq: int = 0) -> bytes:
    return make_request(seq, "post", "", False)


#: A way to drive a fresh machine into each state: (request state, response state) -> steps.
def _reach(machine: Machine, fx: Recorder, where: str) -> None:
    plain = make_request(0, "plain", '{"Image": "busybox"}', False)
    if where == "IDLE":
        return
    if where == "HOLDING":
        machine.client_data(make_request(0, "pre", '{"Image": "busybox"}', False)[:-3])
    elif where == "PRE_HOOKS":
        machine.client_data(make_request(0, "pre", "", False))
    elif where == "SENDING":
        machine.client_data(plain[:-3])
    elif where == "DONE":
        machine.client_data(plain)
    elif where == "HIJACKED":
        machine.client_data(make_request(0, "attach", "", False))
        machine.daemon_data(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    elif where == "CLOSED":
        machine.client_data(b"GET /v1.41/_ping HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    elif where == "WAITING":
        machine.client_data(plain)
    elif where == "STREAMING":
        machine.client_data(make_request(0, "stream", "", False))
        machine.daemon_data(daemon_answer(0, stream=True)[:-8])
    elif where == "COLLECTING":
        machine.client_data(_post_request())
        machine.daemon_data(daemon_answer(0)[:-3])
    elif where == "POST_HOOKS":
        machine.client_data(_post_request())
        machine.daemon_data(daemon_answer(0))
    elif where == "RESPONSE_DONE":
        machine.client_data(plain[:-3])
        machine.daemon_data(daemon_answer(0))


#: Each event with arguments that fit whatever exchange is current.
def _fire(machine: Machine, fx: Recorder, event: str) -> None:
    exchange = machine.exchange
    if event == "client_data":
        machine.client_data(b'"}' if machine.request_state in (RequestState.HOLDING,
                                                              RequestState.SENDING)
                            else make_request(1, "plain", "", False))
    elif event == "client_eof":
        machine.client_ended()
    elif event == "client_gone":
        machine.client_gone()
        fx.closed = True
    elif event == "pre_hooks_done":
        request = fx.pre_calls[-1][1] if fx.pre_calls else ClientRequest("GET", "/", None)
        machine.pre_hooks_done(exchange, request)
    elif event == "hooks_failed":
        machine.hooks_failed(exchange, 403, "refused by adapter a")
    elif event == "daemon_unreachable":
        machine.daemon_unreachable("connection refused")
    elif event == "shutdown":
        machine.shutdown()
    elif event == "deadline":
        machine.deadline(5.0)
    elif event == "head_timeout":
        machine.head_timeout(30.0)
    elif event == "idle_timeout":
        machine.idle_timeout(300.0)
    elif event == "daemon_data":
        machine.daemon_data(daemon_answer(0)[-3:] if machine.response_state in (
            ResponseState.STREAMING, ResponseState.COLLECTING) else b"HTTP/1.1 204 No\r\n\r\n")
    elif event == "daemon_eof":
        machine.daemon_ended()
    elif event == "daemon_gone":
        machine.daemon_gone()
    elif event == "post_hooks_done":
        response = fx.post_calls[-1][2] if fx.post_calls else ServerResponse(None, None, 200)
        machine.post_hooks_done(exchange, response)
    else:
        raise AssertionError(f"no way to fire {event}")


def _pairs() -> list[tuple[str, str, str]]:
    """(side, event, where) for every entry of both tables."""
    pairs = [("request", name, state.name)
             for name, handlers in REQUEST_TABLE.items() for state in handlers]
    pairs += [("response", name, "RESPONSE_DONE" if state is ResponseState.DONE else state.name)
              for name, handlers in RESPONSE_TABLE.items() for state in handlers]
    return pairs


@pytest.mark.parametrize(("side", "event", "where"), _pairs())
def test_every_event_in_every_state(side, event, where):
    """Each (state, event) of the tables, reached on purpose: the event is handled (a
    transition, or a Docker-style error and a close), and nothing is sent after a close."""
    machine, fx = _machine()
    _reach(machine, fx, where)
    state = machine.request_state if side == "request" else machine.response_state
    assert state.name == ("DONE" if where == "RESPONSE_DONE" else where)
    visited: set[tuple[str, str]] = set()
    answered_before = bytes(fx.client)
    with recording(visited):
        _fire(machine, fx, event)
    assert visited, "the event went through a table"
    assert not fx.after_close, fx.after_close
    new = bytes(fx.client)[len(answered_before):]
    if machine.closed and new and not machine.hijacked and b"\r\n\r\n" in new:
        status, message = responses_in(new)[-1] if responses_in(new) else (200, None)
        if status >= 400:
            assert isinstance(message, str) and message, "a Docker-style {'message': ...}"
    if fx.closed or fx.aborted:
        assert machine.closed


# -- the tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("event", sorted(REQUEST_TABLE))
def test_every_request_state_has_a_handler(event):
    assert set(REQUEST_TABLE[event]) == set(RequestState)


@pytest.mark.parametrize("event", sorted(RESPONSE_TABLE))
def test_every_response_state_has_a_handler(event):
    assert set(RESPONSE_TABLE[event]) == set(ResponseState)


# -- plain cases, named -------------------------------------------------------------------


def _machine() -> tuple[Machine, Recorder]:
    fx = Recorder()
    return Machine(fx, FakeHooks(), "unix:///daemon.sock"), fx


def test_a_plain_request_passes_through_and_the_exchange_ends():
    machine, fx = _machine()
    request = make_request(0, "plain", "", False)
    machine.client_data(request)
    assert fx.daemon == request
    assert machine.request_state is RequestState.DONE
    assert machine.response_state is ResponseState.WAITING
    machine.daemon_data(daemon_answer(0))
    assert fx.client == daemon_answer(0)
    assert machine.request_state is RequestState.IDLE
    assert machine.response_state is ResponseState.IDLE


def test_a_json_body_is_held_until_the_pre_hooks_approve():
    machine, fx = _machine()
    request = make_request(0, "pre", '{"Image": "busybox"}', False)
    machine.client_data(request[:-5])
    assert machine.request_state is RequestState.HOLDING and not fx.daemon
    machine.client_data(request[-5:])
    assert machine.request_state is RequestState.PRE_HOOKS and not fx.daemon
    exchange, sent = fx.pre_calls.pop()
    assert sent.body == '{"Image": "busybox"}'
    machine.pre_hooks_done(exchange, sent)
    assert fx.daemon == request


def test_a_late_hook_answer_for_an_ended_exchange_is_ignored():
    machine, fx = _machine()
    machine.client_data(make_request(0, "pre", "", False))
    exchange, sent = fx.pre_calls.pop()
    machine.hooks_failed(exchange, 403, "no")
    assert responses_in(fx.client) == [(403, "no")]
    machine.pre_hooks_done(exchange, sent)  # after the refusal: nothing happens
    assert not fx.daemon


def test_a_client_that_ends_mid_body_held_for_hooks_is_closed_not_left_waiting():
    machine, fx = _machine()
    request = make_request(0, "pre", '{"Image": "busybox"}', False)
    machine.client_data(request[:-3])
    machine.client_ended()
    assert fx.closed and not fx.daemon


def test_a_client_that_ends_after_a_partial_head_is_closed():
    machine, fx = _machine()
    machine.client_data(b"GET /_ping HTTP/1.1\r\nHost:")
    machine.client_ended()
    assert fx.closed


def test_end_of_input_waits_for_the_approved_request():
    machine, fx = _machine()
    machine.client_data(make_request(0, "pre", "", False))
    machine.client_ended()
    assert not fx.daemon_half_closed, "the request has not been sent yet"
    exchange, sent = fx.pre_calls.pop()
    machine.pre_hooks_done(exchange, sent)
    assert fx.daemon and fx.daemon_half_closed


def test_more_bytes_while_post_hooks_run_do_not_call_them_again():
    machine, fx = _machine()
    machine.client_data(make_request(0, "post", "", False))
    machine.daemon_data(daemon_answer(0))
    assert len(fx.post_calls) == 1
    machine.daemon_data(b"HTTP/1.1 200 OK\r\n")
    assert len(fx.post_calls) == 1 and fx.closed


def test_after_a_refusal_the_daemons_late_answer_is_not_forwarded():
    machine, fx = _machine()
    machine.client_data(b"POST /plain/0 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"zz\r\n")
    assert fx.closed and responses_in(fx.client)[0][0] == 400
    before = bytes(fx.client)
    machine.daemon_data(daemon_answer(0))
    assert fx.client == before


def test_a_misspelled_path_is_refused_before_anything_reaches_the_daemon():
    machine, fx = _machine()
    machine.client_data(make_request(0, "bad", "", False))
    assert fx.closed and not fx.daemon
    assert responses_in(fx.client)[0][0] == 400


def test_hijack_passes_raw_bytes_both_ways():
    machine, fx = _machine()
    machine.client_data(make_request(0, "attach", "", False) + b"early stdin")
    machine.daemon_data(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
    assert machine.hijacked
    assert fx.daemon.endswith(b"early stdin")
    machine.daemon_data(b"out")
    machine.client_data(b"in")
    assert fx.client.endswith(b"out") and fx.daemon.endswith(b"in")
    machine.client_ended()
    assert fx.daemon_half_closed and not fx.closed
    machine.daemon_ended()
    assert fx.client_half_closed and fx.closed


def test_shutdown_closes_an_idle_connection_and_drains_a_busy_one():
    machine, fx = _machine()
    machine.shutdown()
    assert fx.closed
    machine, fx = _machine()
    machine.client_data(make_request(0, "plain", "", False))
    machine.shutdown()
    assert not fx.closed
    machine.daemon_data(daemon_answer(0))
    assert fx.closed and responses_in(fx.client) == [(200, 0)]


def test_the_deadline_answers_a_waiting_request_with_503():
    machine, fx = _machine()
    machine.client_data(make_request(0, "plain", "", False))
    machine.deadline(5.0)
    assert fx.closed
    status, message = responses_in(fx.client)[0]
    assert status == 503 and re.search(r"5 s shutdown grace", message)


def test_the_daemon_going_away_unanswered_is_a_502():
    machine, fx = _machine()
    machine.client_data(make_request(0, "plain", "", False))
    machine.daemon_gone()
    status, message = responses_in(fx.client)[0]
    assert status == 502 and "unix:///daemon.sock" in message and fx.closed


def test_a_request_whose_lines_end_in_a_bare_lf_is_refused_and_closed():
    machine, fx = _machine()
    machine.client_data(b"GET /v1.41/_ping HTTP/1.1\nHost: x\n\n")
    (status, message), = responses_in(fx.client)
    assert status == 400 and "bare LF" in message
    assert fx.closed and not fx.daemon


@pytest.mark.parametrize("head", [
    b"GET /v1.41/x/0?hooks=pre HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /v1.41/x/0?hooks=pre HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Close\r\n\r\n",
    b"GET /v1.41/x/0?hooks=pre HTTP/1.0\r\nHost: x\r\n\r\n",
])
def test_a_refusal_honours_a_client_that_asked_to_close(head):
    """A client that reads to EOF, as HTTP lets it, must see the end after the answer."""
    machine, fx = _machine()
    machine.client_data(head)
    exchange, _ = fx.pre_calls.pop()
    machine.hooks_failed(exchange, 403, "refused by adapter a")
    assert responses_in(fx.client) == [(403, "refused by adapter a")]
    assert b"\r\nConnection: close\r\n" in fx.client and fx.closed


def test_a_refusal_keeps_an_http10_keep_alive_connection():
    machine, fx = _machine()
    machine.client_data(b"GET /v1.41/x/0?hooks=pre HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    exchange, _ = fx.pre_calls.pop()
    machine.hooks_failed(exchange, 403, "refused by adapter a")
    assert responses_in(fx.client) == [(403, "refused by adapter a")] and not fx.closed


@pytest.mark.parametrize("hooks", ["pre", "post"])
def test_a_json_body_larger_than_the_pipeline_mark_is_read_whole_for_hooks(hooks):
    """The client is not paused half-way through a body the hooks must see whole: that would
    wait for ever for its end."""
    class LargerLimit(FakeHooks):
        def plan(self, method: bytes, target: bytes) -> FakePlan | None:
            plan = super().plan(method, target)
            if plan is not None:
                plan.config = FakeConfig(max_body=1 << 20)
            return plan

    fx = Recorder()
    machine = Machine(fx, LargerLimit(), "unix:///daemon.sock")
    body = '{"Labels": {"a": "' + "x" * (PIPELINE_HIGH_WATER + 1000) + '"}}'
    request = make_request(0, hooks, body, False)
    for start in range(0, len(request), 65536):
        assert not fx.paused, "paused with the body unfinished"
        machine.client_data(request[start:start + 65536])
    if hooks == "pre":
        (_, sent), = fx.pre_calls
        assert sent.body == body
    else:
        assert machine.request_state is RequestState.DONE
        assert machine.exchange.hooked_request.body == body


def test_post_hooks_see_the_json_body_of_a_request_without_pre_hooks():
    machine, fx = _machine()
    request = make_request(0, "post", '{"Image": "busybox"}', True)
    machine.client_data(request)
    assert fx.daemon == request, "the request passes as it came"
    machine.daemon_data(daemon_answer(0))
    (_, sent_request, _), = fx.post_calls
    assert sent_request.body == '{"Image": "busybox"}'


def test_a_post_hooked_body_over_the_limit_is_refused_before_anything_is_sent():
    machine, fx = _machine()
    machine.client_data(make_request(0, "post", '{"a": "' + "x" * 700 + '"}', False))
    (status, message), = responses_in(fx.client)
    assert status == 413 and "max_body" in message and not fx.daemon and fx.closed


def test_a_pipelined_request_cut_short_by_the_end_of_input_is_closed_when_its_turn_comes():
    machine, fx = _machine()
    first = make_request(0, "plain", "", False)
    second = make_request(1, "pre", '{"Image": "busybox"}', False)
    machine.client_data(first + second[:-5])
    machine.client_ended()
    assert not fx.closed, "the first request is owed its answer"
    machine.daemon_data(daemon_answer(0))
    assert responses_in(fx.client) == [(200, 0)]
    assert fx.closed and not fx.pre_calls, "the second can never be whole"


def test_a_head_begun_and_not_finished_in_time_gets_408_and_the_connection_closes():
    machine, fx = _machine()
    machine.client_data(b"GET /v1.41/_ping HTTP/1.1\r\nHo")
    machine.idle_timeout(300.0)
    assert not fx.closed, "a head has begun: not merely idle"
    machine.head_timeout(30.0)
    (status, message), = responses_in(fx.client)
    assert status == 408 and "30 s" in message and "--head-timeout" in message and fx.closed


def test_an_idle_connection_is_closed_without_an_answer_but_a_busy_one_is_not():
    machine, fx = _machine()
    machine.head_timeout(30.0)
    assert not fx.closed, "nothing of a head: not a slow head"
    machine.idle_timeout(300.0)
    assert fx.closed and not fx.client
    machine, fx = _machine()
    machine.client_data(make_request(0, "stream", "", False))
    machine.daemon_data(daemon_answer(0, stream=True)[:-8])
    machine.idle_timeout(300.0)
    machine.head_timeout(30.0)
    assert not fx.closed, "a stream may be quiet for hours"


def test_the_rest_of_a_body_never_reaches_a_new_daemon_connection():
    """Were it sent on after the daemon hung up mid-body, a new connection would read it as a
    request of its own, one no hook saw."""
    machine, fx = _machine()
    smuggled = b'GET /v1.41/x/9?hooks=pre HTTP/1.1\r\nHost: x\r\n\r\n'
    head = (b"POST /v1.41/x/0?hooks=post HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n" % (len(smuggled) + 2))
    machine.client_data(head + b"{}")
    machine.daemon_data(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
    machine.daemon_gone()
    fx.daemon = bytearray()  # a new connection, were one made
    machine.client_data(smuggled)
    assert not fx.daemon, "nothing of the rest went to the daemon"
    if fx.post_calls:
        exchange, _, response = fx.post_calls.pop()
        machine.post_hooks_done(exchange, response)
    assert responses_in(fx.client)[0][0] == 400 and fx.closed


def test_an_early_answer_held_for_post_hooks_goes_on_when_the_client_ends_mid_body():
    machine, fx = _machine()
    request = make_request(0, "post", '{"Image": "busybox"}', False)
    machine.client_data(request[:-3])
    machine.daemon_data(daemon_answer(0))
    assert not fx.post_calls, "the post-hooks wait for the body"
    machine.client_ended()
    (exchange, sent_request, response), = fx.post_calls
    assert sent_request.body is None, "never whole: not shown"
    assert fx.daemon_half_closed
    machine.post_hooks_done(exchange, response)
    assert responses_in(fx.client) == [(200, 0)] and fx.closed

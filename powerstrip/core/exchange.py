"""One client connection's exchanges as a state machine, without I/O.

The proxy's connection driver (``powerstrip.proxy.connection``) turns transport callbacks into
the events of ``Machine`` (client bytes, client EOF, daemon bytes, daemon EOF, daemon gone, hook
answers and failures, shutdown and its deadline) and performs the actions the machine asks of
its ``Effects`` (send to the daemon, send to the client, call hooks, pause and resume reading,
half-close, close). Nothing here touches a socket, a reactor or a clock of its own, so every
path is tested with plain calls (``tests/unit/test_exchange.py``).

Like h11's, the state is split by role. The *request* side follows the client's current request
(``RequestState``); the *response* side follows the answer to it (``ResponseState``). They move
independently: the daemon may answer before a request body has all arrived, and a request's
body may still be read while post-hooks hold its response. An exchange ends when both sides are
``DONE``; the connection then reads its next request. A hijack (101, or a legacy raw stream)
takes both sides to ``HIJACKED``; any close takes both to ``CLOSED``.

Every event is dispatched through a table keyed by the state of the side it concerns:
``REQUEST_TABLE`` for the client's events and the proxy's own (shutdown, its deadline, a daemon
that cannot be reached), ``RESPONSE_TABLE`` for the daemon's; a hook failure goes to the side
that waits for the hooks. Each table names a handler for every state, so no combination is left
without a defined next step. A handler either moves the exchange on or
answers with a Docker-style error and closes: nothing leaves a connection open and silent.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable
from typing import Protocol

from powerstrip.core.canonical import AmbiguousBody, body_shape, canonical_body, respell
from powerstrip.core.errors import error_response
from powerstrip.core.framing import (
    END,
    Body,
    BodyKind,
    CollectingResponseReader,
    FramingError,
    Head,
    RequestHead,
    RequestReader,
    ResponseReader,
    build_request_head,
    build_response,
    decode_chunked,
)
from powerstrip.core.media import hidden_from_hooks, is_json, is_text
from powerstrip.core.paths import SpellingError, canonical_path, is_stream
from powerstrip.hooks.wire import ClientRequest, ServerResponse

log = logging.getLogger(__name__)

#: Bytes of pipelined requests, or of a body held for pre-hooks, read before the client is
#: paused.
PIPELINE_HIGH_WATER = 256 * 1024


class RequestState(enum.Enum):
    """Where the client's current request stands."""

    #: Between requests: the reader waits for (the rest of) a head.
    IDLE = "idle"
    #: Head read; its JSON body is held whole for the pre-hooks. Nothing reached the daemon.
    HOLDING = "holding"
    #: The pre-hooks are running. Nothing of this request reached the daemon; a body that is
    #: not shown to them waits, unread once past the high-water mark.
    PRE_HOOKS = "pre_hooks"
    #: Approved (or unhooked) and passing to the daemon as it arrives; not yet read whole.
    SENDING = "sending"
    #: Read whole and passed on (or answered by the proxy itself).
    DONE = "done"
    #: The connection carries raw bytes both ways now.
    HIJACKED = "hijacked"
    #: Nothing more is read or sent.
    CLOSED = "closed"

    # Members are singletons: hashing by identity keeps a table lookup off Enum's Python-level
    # hash, on every event of every request.
    __hash__ = object.__hash__


class ResponseState(enum.Enum):
    """Where the answer to the client's current request stands."""

    #: No request is outstanding: any byte from the daemon now is one nobody asked for.
    IDLE = "idle"
    #: Waiting for the daemon's answer; nothing of it was sent to the client.
    WAITING = "waiting"
    #: Passing the daemon's answer to the client as it arrives.
    STREAMING = "streaming"
    #: Holding the daemon's answer whole for the post-hooks.
    COLLECTING = "collecting"
    #: The post-hooks are running on the held answer.
    POST_HOOKS = "post_hooks"
    #: The answer has been sent whole.
    DONE = "done"
    HIJACKED = "hijacked"
    CLOSED = "closed"

    __hash__ = object.__hash__  # as RequestState's


class PlanLike(Protocol):
    """What the machine needs of a request's hook plan (``powerstrip.hooks.plans.Plan``)."""

    pre: tuple
    post: tuple
    #: The adapters file in force (``max_body``: the largest body hooks are shown).
    config: object

    @property
    def endpoints(self) -> str:
        """The matched endpoint keys, for messages."""


class HooksLike(Protocol):
    """The configuration in force, as far as the machine asks it (``LiveConfig``)."""

    active: bool

    def plan(self, method: bytes, target: bytes) -> PlanLike | None:
        """The hooks for a request; raises SpellingError for a path dockerd would refuse."""


class PaceLike(Protocol):
    """Busy-poll bookkeeping (``powerstrip.proxy.reactor.BackToBack``)."""

    quick: bool

    def request(self, now: float) -> bool:
        """A request began."""

    def answered(self, now: float) -> bool:
        """Its answer ended; whether the next request is likely to come back to back."""


class Effects(Protocol):
    """The actions the machine asks of its driver. Each is performed at once, in order."""

    def to_daemon(self, data: bytes) -> None:
        """Send bytes to the daemon (connecting first if there is no connection yet)."""

    def to_client(self, data: bytes) -> None:
        """Send bytes to the client."""

    def half_close_daemon(self) -> None:
        """End the daemon's input (as soon as a connection exists and what was sent left)."""

    def half_close_client(self) -> None:
        """End the client's input, keeping the connection open for the client's bytes."""

    def close_daemon(self) -> None:
        """Close the daemon connection (the client's stays as it is)."""

    def close(self) -> None:
        """Close both connections once what was sent has left."""

    def close_lingering(self) -> None:
        """Close the daemon connection; end the client's output once what was sent has left,
        and read and drop what the client still sends (for a bounded time) before closing."""

    def abort(self) -> None:
        """Reset both connections now."""

    def pause(self, reason: str) -> None:
        """Stop reading from the client for ``reason``."""

    def resume(self, reason: str) -> None:
        """Drop ``reason`` to stop reading from the client."""

    def call_pre_hooks(self, exchange: Exchange, request: ClientRequest) -> None:
        """Run ``exchange.plan.pre`` on ``request``; answer with ``Machine.pre_hooks_done`` or
        ``Machine.hooks_failed``, naming the exchange."""

    def call_post_hooks(
        self, exchange: Exchange, request: ClientRequest, response: ServerResponse
    ) -> None:
        """Run ``exchange.plan.post``; answer with ``Machine.post_hooks_done`` or
        ``Machine.hooks_failed``."""

    def expect_soon(self) -> None:
        """An answer or a request is due at once (the reactor may busy-poll for it)."""


class Exchange:
    """One request and its response: the data both sides of the machine keep about it.

    The class attributes are the starting values: a plain request sets only what differs.
    """

    #: The whole request has been read from the client.
    read_whole = False
    #: A response byte (the daemon's or the proxy's) has been sent to the client.
    forwarded = False
    #: Raw request bytes held back while pre-hooks run.
    held: list[bytes] = []  # replaced, never appended to, while empty
    held_size = 0
    #: The body is JSON that pre-hooks are shown: held whole, until the request ends.
    buffer_json = False
    #: The request as the last pre-hook left it, for post-hooks.
    hooked_request: ClientRequest | None = None
    #: The hooks were shown the body in the daemon's spelling, not the client's
    #: (``core.canonical``): that spelling is what the daemon gets.
    respelled = False
    #: Raw response bytes held for post-hooks.
    response_raw: list[bytes] = []  # likewise
    #: Sent with every hook call for this request (``Powerstrip-Call``); the driver sets it.
    call_id: str | None = None
    #: The response as post-hooks were shown it, and whether it answers a HEAD.
    sent_response: ServerResponse | None = None
    head_only = False
    #: For reports (``Machine.report``): when the request's head arrived and the response's
    #: head left, the status of an answer the proxy made or the post-hooks changed, and
    #: whether the exchange has been reported.
    began = 0.0
    head_at: float | None = None
    #: What each hook call did, when the driver keeps a full record (``observe.records``).
    hook_records: list | None = None
    status: int | None = None
    reported = False

    def __init__(
        self, head: RequestHead, plan: PlanLike | None = None,
        framing: ResponseReader | None = None,
    ) -> None:
        """``framing`` is the connection's framing-only response reader, reused for a
        response nobody inspects."""
        self.head = head
        self.plan = plan
        hijack = head.may_hijack
        collect = False
        if plan is not None and plan.post and not hijack:
            target = head.target.decode("latin-1")
            # The routed path, so that no spelling of a stream gets it held for post-hooks.
            path = canonical_path(target) or target.partition("?")[0]
            collect = not is_stream(path, target.partition("?")[2])
        #: Post-hooks see this response: it is held whole instead of forwarded as it comes.
        self.collect = collect
        if collect:
            self.response: ResponseReader = CollectingResponseReader(head.method)
            self.response_raw = []
        elif (framing is not None and not hijack and head.method != b"HEAD"
                and head.body_kind is BodyKind.NONE):
            self.response = framing.restart()
        else:
            self.response = ResponseReader(head.method, headers=hijack)

    def describe(self) -> str:
        """``METHOD TARGET``, for messages."""
        return f"{self.head.method.decode('latin-1')} {self.head.target.decode('latin-1')}"


class Machine:
    """The exchanges of one client connection, one at a time, in order.

    ``hooks`` is the configuration in force (None: no hooks), ``upstream`` names the daemon in
    messages, ``pace`` and ``clock`` are for busy-polling (both None when nothing busy-polls).
    ``gate``, asked before each request, says why the client may not use the proxy (a 403,
    and the connection ends), or None to let the request in; None: every client may.
    ``report`` hears of each exchange once, when it ends (see ``Exchange.began``).
    """

    def __init__(
        self, effects: Effects, hooks: HooksLike | None = None, upstream: str = "the daemon",
        pace: PaceLike | None = None, clock: Callable[[], float] | None = None,
        gate: Callable[[], str | None] | None = None,
        report: Callable[[Exchange, int], None] | None = None,
    ) -> None:
        self.effects = effects
        #: Told of each exchange as it ends, with the status the client got (499: none, the
        #: client went first); None when nobody watches. Needs ``clock``.
        self.report = report
        self.hooks = hooks
        self.gate = gate
        self.upstream = upstream
        self.pace = pace
        self.clock = clock
        self.reader = RequestReader()
        #: Follows the daemon's responses to plain requests, one llhttp parser for them all.
        self.framing = ResponseReader(headers=False, head=False)
        self.request_state = RequestState.IDLE
        self.response_state = ResponseState.IDLE
        self.exchange: Exchange | None = None
        self.client_eof = False
        #: The client's end of input has been passed on to the daemon.
        self.eof_forwarded = False
        self.daemon_eof_seen = False
        #: Close once the current exchange is over (the proxy is stopping).
        self.draining = False
        self.pipeline_paused = False
        #: The current request's body was cut short (``_cut_short``): close after its answer.
        self.request_cut = False
        #: Requests begun on this connection: the driver's timers tell a quiet connection from
        #: a busy one by it.
        self.started = 0
        # Hot-path effects, bound once.
        self._to_daemon = effects.to_daemon
        self._to_client = effects.to_client

    # -- events: the client side ----------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Bytes from the client."""
        REQUEST_TABLE["client_data"][self.request_state](self, data)

    def client_ended(self) -> None:
        """The client half-closed its connection (no more bytes will come)."""
        self.client_eof = True
        REQUEST_TABLE["client_eof"][self.request_state](self)

    def pre_hooks_done(self, exchange: Exchange, changed: ClientRequest) -> None:
        """The pre-hooks approved ``exchange``'s request, as ``changed``."""
        if exchange is self.exchange:
            REQUEST_TABLE["pre_hooks_done"][self.request_state](self, changed)

    def hooks_failed(self, exchange: Exchange, status: int, message: str) -> None:
        """A hook of ``exchange`` refused it, or could not be called."""
        if exchange is self.exchange:  # else a late answer: its exchange already ended
            REQUEST_TABLE["hooks_failed"][self.request_state](self, status, message)

    # -- events: the daemon side ----------------------------------------------------------

    def daemon_data(self, data: bytes) -> None:
        """Bytes from the daemon."""
        RESPONSE_TABLE["daemon_data"][self.response_state](self, data)

    def daemon_ended(self) -> None:
        """The daemon half-closed its side of the connection."""
        self.daemon_eof_seen = True
        RESPONSE_TABLE["daemon_eof"][self.response_state](self)

    def daemon_gone(self) -> None:
        """The daemon connection is gone (closed, reset, or never made)."""
        self.eof_forwarded = False  # a new connection has not heard it
        if self.request_state is RequestState.SENDING:
            self._cut_short()
        RESPONSE_TABLE["daemon_gone"][self.response_state](self)

    def client_gone(self) -> None:
        """The client connection is gone: nothing more is sent or read."""
        REQUEST_TABLE["client_gone"][self.request_state](self)

    def release(self) -> None:
        """Both connections are gone and nothing more will happen: free the response parsers
        now (each holds its reader in a cycle). Only ``CLOSED``'s events may follow."""
        exchange = self.exchange
        if exchange is not None and exchange.response is not self.framing:
            exchange.response.release()
        self.framing.release()

    def daemon_unreachable(self, reason: str) -> None:
        """A connection to the daemon could not be made."""
        REQUEST_TABLE["daemon_unreachable"][self.request_state](self, reason)

    def post_hooks_done(self, exchange: Exchange, changed: ServerResponse) -> None:
        """The post-hooks answered ``exchange``'s response with ``changed``."""
        if exchange is self.exchange:
            RESPONSE_TABLE["post_hooks_done"][self.response_state](self, changed)

    # -- events: the proxy ----------------------------------------------------------------

    def shutdown(self) -> None:
        """The proxy is stopping: close once the current exchange is over."""
        REQUEST_TABLE["shutdown"][self.request_state](self)

    def deadline(self, grace: float) -> None:
        """The shutdown grace ran out with this connection busy."""
        REQUEST_TABLE["deadline"][self.request_state](self, grace)

    def head_timeout(self, seconds: float) -> None:
        """Part of a request head has waited ``seconds`` for the rest (a slow or stuck
        client)."""
        REQUEST_TABLE["head_timeout"][self.request_state](self, seconds)

    def idle_timeout(self, seconds: float) -> None:
        """The connection has been between requests, with nothing sent, for ``seconds``."""
        REQUEST_TABLE["idle_timeout"][self.request_state](self, seconds)

    @property
    def closed(self) -> bool:
        """Whether the machine closed the connection."""
        return self.request_state is RequestState.CLOSED

    @property
    def hijacked(self) -> bool:
        """Whether the connection carries raw bytes both ways."""
        return self.request_state is RequestState.HIJACKED

    # -- request side ---------------------------------------------------------------------

    def _read(self, data: bytes) -> None:
        """Bytes of the HTTP stream: a new request, a body, or pipelined requests to hold."""
        reader = self.reader
        try:
            head = reader.whole_request(data)
            if head is None:
                events = reader.feed(data)
        except FramingError as exc:
            self._refuse(exc.status, str(exc))
            return
        if head is not None:
            if self._start(head):
                self._request_read()
        elif events:
            self._handle(events)
        elif reader.waiting and reader.buffered > PIPELINE_HIGH_WATER:
            self.pipeline_paused = True
            self.effects.pause("pipeline")

    def _handle(self, events: list) -> None:
        for event in events:
            kind = event.__class__
            if kind is Body:
                state = self.request_state
                if state is RequestState.SENDING:
                    self._to_daemon(event.data)
                    if self.exchange.buffer_json:
                        self._hold(event.data)  # a copy for the post-hooks
                elif state is RequestState.HOLDING or state is RequestState.PRE_HOOKS:
                    self._hold(event.data)
                else:
                    return  # refused part-way (413, a hook failure): the rest is for nobody
            elif kind is Head:
                if not self._start(event.head):
                    return
            elif event is END:
                if self.request_state is not RequestState.CLOSED:
                    self._request_read()
                return  # the last event: the reader waits after each request

    def _start(self, head: RequestHead) -> bool:
        """Begin an exchange; False if the request was refused and the connection is ending."""
        self.started += 1
        if self.pace is not None:
            self.pace.request(self.clock())
        began = self.clock() if self.report is not None else 0.0
        if self.gate is not None:
            refusal = self.gate()
            if refusal is not None:
                # Before the daemon or any adapter hears of it; the client's next request
                # would be refused alike, so the connection ends.
                self.exchange = Exchange(head)
                self.exchange.began = began
                self._refuse(403, refusal)
                return False
        hooks = self.hooks
        plan = None
        if hooks is not None and hooks.active:
            try:
                plan = hooks.plan(head.method, head.target)
            except SpellingError as exc:
                self.exchange = Exchange(head)
                self.exchange.began = began
                self._refuse(400, f"refused {self.exchange.describe()}: {exc}")
                return False
        exchange = self.exchange = Exchange(head, plan, self.framing)
        exchange.began = began
        if plan is None or not plan.pre:
            if (plan is not None and head.body_kind is not BodyKind.NONE
                    and is_json(head.header(b"content-type"))):
                # Post-hooks are shown the request's JSON body too: it is copied on its way.
                if head.body_kind is BodyKind.LENGTH and head.content_length > plan.config.max_body:
                    self._too_large(head.content_length)
                    return False
                exchange.buffer_json = True
                exchange.held = []
            self.request_state = RequestState.SENDING
            self._await_answer()
            self._to_daemon(head.raw)
            if self.client_eof:
                self._forward_eof()
            return True
        exchange.held = []
        problem = hidden_from_hooks(head.method, head.headers,
                                    head.body_kind is not BodyKind.NONE)
        if problem is not None:
            self._refuse(400, f"refused {exchange.describe()}: {problem}, on an endpoint with "
                              f"pre-hooks (endpoint {plan.endpoints})")
            return False
        if head.body_kind is not BodyKind.NONE and is_json(head.header(b"content-type")):
            if head.body_kind is BodyKind.LENGTH and head.content_length > plan.config.max_body:
                self._too_large(head.content_length)
                return False
            exchange.buffer_json = True
            self.request_state = RequestState.HOLDING
        else:
            # Body: null for the hooks; whatever body there is waits, unread, for their answer.
            self.effects.pause("hooks")
            self._run_pre_hooks()
        return True

    def _hold(self, data: bytes) -> None:
        exchange = self.exchange
        exchange.held.append(data)
        exchange.held_size += len(data)
        if exchange.buffer_json:
            # A JSON body is read whole, up to the limit (max_body): the hooks need all of it.
            # Chunked framing adds a few bytes; the payload is checked exactly when it is whole.
            if exchange.held_size > exchange.plan.config.max_body + 1024:
                self._too_large(exchange.held_size)
        elif exchange.held_size > PIPELINE_HIGH_WATER:
            # Any other body waits for the hooks' answer: the client stops once this much came.
            self.effects.pause("hooks")

    def _too_large(self, size: int) -> None:
        exchange = self.exchange
        self._refuse(
            413,
            f"request body of {size} bytes exceeds the {exchange.plan.config.max_body}-byte "
            f"limit for hooks (max_body) on {exchange.describe()} "
            f"(endpoint {exchange.plan.endpoints})",
        )

    def _request_read(self) -> None:
        """The current request has been read whole."""
        if self.pace is not None and self.pace.quick:
            self.effects.expect_soon()  # the daemon's answer, or the pre-hooks' adapters'
        exchange = self.exchange
        exchange.read_whole = True
        state = self.request_state
        if state is RequestState.HOLDING:
            self._run_pre_hooks()
        elif state is RequestState.SENDING:
            collecting = self.response_state is ResponseState.COLLECTING
            if exchange.buffer_json:
                if collecting:  # the post-hooks are still to come: they see the body
                    body_text = self._json_body()
                    if body_text is None:
                        return
                    method = exchange.head.method.decode("latin-1")
                    target = exchange.head.target.decode("latin-1")
                    try:
                        body_text = canonical_body(body_shape(method, target), body_text).text
                    except AmbiguousBody:
                        pass  # already forwarded as sent: the daemon's own reading decided
                    exchange.hooked_request = ClientRequest(
                        method, target, body_text, headers=_shown(exchange.head.headers))
                exchange.held = []
            self.request_state = RequestState.DONE
            if self.response_state is ResponseState.DONE:
                self._finish_exchange()
            elif collecting and exchange.response.complete:
                self._collected()  # an answer that came early waited for this body
        # PRE_HOOKS: the hooks' answer goes on from here.

    def _run_pre_hooks(self) -> None:
        exchange = self.exchange
        head = exchange.head
        method, target = head.method.decode("latin-1"), head.target.decode("latin-1")
        body_text = shape = None
        if exchange.buffer_json:
            body_text = self._json_body()
            if body_text is None:
                return
            # Hooks see the body as the daemon will decode it, and the daemon gets what they saw.
            shape = body_shape(method, target)
            try:
                shown = canonical_body(shape, body_text)
            except AmbiguousBody as exc:
                self.request_state = RequestState.PRE_HOOKS
                self._pre_hooks_failed(400, (
                    f"refused {exchange.describe()}: its JSON body cannot be shown to the hooks "
                    f"of endpoint {exchange.plan.endpoints} as the daemon would read it: {exc}"))
                return
            body_text = shown.text
            exchange.respelled = shown.changed
        request = ClientRequest(method, target, body_text,
                                None if shape is None else functools.partial(respell, shape),
                                _shown(head.headers))
        exchange.hooked_request = request
        self.request_state = RequestState.PRE_HOOKS
        self.effects.call_pre_hooks(exchange, request)

    def _json_body(self) -> str | None:
        """The held JSON body as hooks are shown it; None if it is over the limit (refused)."""
        exchange = self.exchange
        raw = b"".join(exchange.held)
        payload = decode_chunked(raw) if exchange.head.body_kind is BodyKind.CHUNKED else raw
        if len(payload) > exchange.plan.config.max_body:
            self._too_large(len(payload))
            return None
        # The daemon's JSON decoder reads a byte that is not UTF-8 as U+FFFD, and so do the
        # hooks; unless they change the body, the original bytes are what is forwarded.
        return payload.decode("utf-8", "replace")

    def _approved(self, changed: ClientRequest) -> None:
        """PRE_HOOKS, pre_hooks_done: send the request as the hooks left it."""
        exchange = self.exchange
        head = exchange.head
        sent = exchange.hooked_request
        exchange.hooked_request = changed
        held, exchange.held = exchange.held, []
        if changed == sent and not exchange.respelled:
            out = [head.raw, *held]
        else:
            method, target = changed.method.encode("latin-1"), changed.request.encode("latin-1")
            headers = (head.headers if changed.headers == sent.headers
                       else _wire_headers(changed.headers))
            if exchange.buffer_json or (head.body_kind is BodyKind.NONE and changed.body):
                body = (changed.body or "").encode("utf-8")
                if (head.body_kind is BodyKind.NONE
                        and not any(name.lower() == b"content-type" for name, _ in headers)):
                    headers = [*headers, (b"Content-Type", b"application/json")]
                out = [build_request_head(method, target, headers, len(body)), body]
            else:
                if changed.body != sent.body:
                    log.warning("adapters changed the body of %s %s, which is not JSON: "
                                "it is passed on unchanged", changed.method, changed.request)
                out = [build_request_head(method, target, headers, None), *held]
        self.request_state = (RequestState.DONE if exchange.read_whole
                              else RequestState.SENDING)
        self._await_answer()
        for data in out:
            self._to_daemon(data)
        self.effects.resume("hooks")
        if self.client_eof:
            self._forward_eof()

    def _await_answer(self) -> None:
        """The request goes to the daemon now: from here its bytes are the answer to it. (While
        pre-hooks hold a request, the response side stays IDLE: the daemon owes nothing.)"""
        self.response_state = (ResponseState.COLLECTING if self.exchange.collect
                               else ResponseState.WAITING)

    def _pre_hooks_failed(self, status: int, message: str) -> None:
        exchange = self.exchange
        if not exchange.read_whole:
            # Part of its body is still to come, and the proxy cannot tell where the next
            # request would start without reading it: end the connection.
            self._refuse(status, message)
            return
        # The whole request was read and nothing of it sent: the connection stays usable for
        # the client's next request.
        exchange.held = []
        self.request_state = RequestState.DONE
        self._answer_error(status, message)

    def _answer_error(self, status: int, message: str) -> None:
        """Answer the current request with an error and go on to the next one (or close, as
        the daemon would, when the client asked for that)."""
        exchange = self.exchange
        if not exchange.head.keep_alive:
            self._refuse(status, message)
            return
        exchange.forwarded = True
        exchange.status = status
        if self.report is not None:
            exchange.head_at = self.clock()
        exchange.response_raw = []
        self.response_state = ResponseState.DONE
        self._to_client(error_response(status, message, close=False))
        self.effects.resume("hooks")
        if self.request_state is RequestState.DONE:
            self._finish_exchange()

    def _finish_exchange(self) -> None:
        """Both sides are DONE: go on to the next request."""
        if self.report is not None:
            exchange = self.exchange
            self._report(exchange, exchange.status or exchange.response.status or 0)
        if self.request_cut:
            self._close()
            return
        self.exchange = None
        self.request_state = RequestState.IDLE
        self.response_state = ResponseState.IDLE
        pace = self.pace
        # Pipelined requests count too: the next one then starts right after this answer.
        quick = pace is not None and pace.answered(self.clock())
        try:
            events = self.reader.next_request()
        except FramingError as exc:
            self._refuse(exc.status, str(exc))
            return
        if events:
            self._handle(events)
            if self.client_eof:
                # The client ended its input before this pipelined request began: what that
                # means for it (sent on, or never to be whole) is decided now.
                REQUEST_TABLE["client_eof"][self.request_state](self)
            return
        if self.pipeline_paused:
            self.pipeline_paused = False
            self.effects.resume("pipeline")
        if self.draining or self.client_eof:
            # Stopping; or the client sent all it will and has its answers: whatever the
            # daemon does with the end of input passed on to it, nothing more is owed.
            self._close()
        elif quick:
            self.effects.expect_soon()  # a back-to-back client's next request

    def _forward_eof(self) -> None:
        """Pass the client's end of input on to the daemon once everything before it has gone.

        The daemon hears the client's half-close as it would direct: on a hijacked connection
        that is the end of stdin (``echo hi | docker run -i``); during a response it is how
        dockerd learns that nobody reads an ``events`` or ``logs -f`` stream any more.
        """
        state = self.request_state
        if self.eof_forwarded or state is RequestState.CLOSED:
            return
        if state is RequestState.HIJACKED:
            self.eof_forwarded = True
            self.effects.half_close_daemon()
            if self.daemon_eof_seen:
                self._close()
        elif state is RequestState.IDLE:
            # Between requests, whatever is held is at most part of a head (a whole one would
            # have begun an exchange): it can never be completed, and nothing is owed for it.
            self._close()
        elif state is RequestState.SENDING or state is RequestState.DONE:
            if self.reader.buffered:
                return  # pipelined requests are still to be sent first
            self.eof_forwarded = True
            self.effects.half_close_daemon()
        # HOLDING or PRE_HOOKS: nothing was sent yet; see _client_eof_unsent.

    # Request-side handlers, named by state (see REQUEST_TABLE).

    def _raw_to_daemon(self, data: bytes) -> None:
        self._to_daemon(data)

    def _ignore(self, *args: object) -> None:
        pass

    def _client_eof_idle(self) -> None:
        self._forward_eof()

    def _client_gone(self, *args: object) -> None:
        self._set_closed()

    def _client_eof_unsent(self) -> None:
        """HOLDING or PRE_HOOKS: the client stopped sending before its request was passed on."""
        exchange = self.exchange
        if exchange.read_whole:
            return  # the hooks' answer decides; the end of input follows the request then
        # A request that can never be read whole: nothing of it reached the daemon, and no
        # answer can be owed for it. Close, as dockerd does on a body cut short.
        self._close()

    def _client_eof_sent(self) -> None:
        """SENDING, DONE or HIJACKED, client_eof: the daemon hears it as it would direct."""
        if self.request_state is RequestState.SENDING:
            self._cut_short()
            self._forward_eof()
            if (self.response_state is ResponseState.COLLECTING
                    and self.exchange.response.complete):
                self._collected()  # an early answer that waited for the body: it goes on
        else:
            self._forward_eof()

    def _cut_short(self) -> None:
        """The request's body will never be whole: the client ended its input, or the daemon
        connection it was going to is gone (on a new one the rest would be read as a new
        request, one no hook saw). Nothing more of it is read or sent, post-hooks see no body,
        and the connection ends after the answer."""
        exchange = self.exchange
        exchange.buffer_json = False
        exchange.held = []
        self.request_state = RequestState.DONE
        self.request_cut = True

    def _hooks_failed_after_sending(self, status: int, message: str) -> None:
        """SENDING or DONE, hooks_failed: the post-hooks' failure; the response side says."""
        RESPONSE_TABLE["hooks_failed"][self.response_state](self, status, message)

    def _daemon_unreachable(self, reason: str) -> None:
        log.warning("cannot reach the Docker daemon at %s: %s", self.upstream, reason)
        self._refuse(502, f"cannot reach the Docker daemon at {self.upstream}: {reason}")

    def _shutdown_idle(self) -> None:
        """IDLE, shutdown: at most part of a head is held, which nobody is owed: close."""
        self.draining = True
        self._close()

    def _shutdown_busy(self) -> None:
        """Busy or hijacked, shutdown: close when the exchange is over (a hijacked stream
        runs until it ends or the deadline)."""
        self.draining = True

    def _deadline_busy(self, grace: float) -> None:
        """HOLDING, PRE_HOOKS, SENDING or DONE, deadline.

        A request still waiting for its answer is told so with a Docker-style error, so that
        its client knows it may not have taken effect rather than seeing a bare disconnect;
        a response half sent can only be cut.
        """
        exchange = self.exchange
        if exchange.forwarded:
            self._abort()
            return
        self._refuse(
            503,
            f"Powerstrip is stopping: the Docker daemon at {self.upstream} had not "
            f"answered {exchange.describe()} within the {grace:g} s shutdown grace",
        )

    def _head_timeout(self, seconds: float) -> None:
        """IDLE, head_timeout: a head begun and not finished in time is refused; a connection
        with nothing of a head is only idle (the driver tells them apart)."""
        if self.reader.buffered:
            self._refuse(408, f"the request head did not arrive whole within {seconds:g} s "
                              "(--head-timeout)")

    def _idle_timeout(self, seconds: float) -> None:
        """IDLE, idle_timeout: a keep-alive connection unused for so long is closed, as HTTP
        servers close theirs; a client opens another when it needs one."""
        if not self.reader.buffered:
            self._close()

    def _deadline_cut(self, grace: float) -> None:
        """IDLE or HIJACKED, deadline: nothing to answer; a stream can only be cut."""
        self._abort()

    # -- response side --------------------------------------------------------------------

    def _unasked(self, data: bytes) -> None:
        """IDLE or DONE, daemon_data: bytes for no request."""
        log.warning("the Docker daemon sent %d bytes nobody asked for; closing", len(data))
        self._close()

    def _raw_to_client(self, data: bytes) -> None:
        self._to_client(data)

    def _stream(self, data: bytes) -> None:
        """WAITING or STREAMING, daemon_data: pass the answer on, watching for its end."""
        exchange = self.exchange
        response = exchange.response
        had_head = response.head is not None
        try:
            response.feed(data)
        except FramingError as exc:
            if exchange.forwarded:
                self._abort()
            else:
                self._refuse(exc.status, str(exc))
            return
        if not exchange.forwarded:
            exchange.forwarded = True
            if self.report is not None:
                exchange.head_at = self.clock()
        self.response_state = ResponseState.STREAMING
        self._to_client(data)
        # A 101 switches protocols whatever the reader (a framing-only one never has a head);
        # a legacy raw stream is a hijack only where the request could be one.
        if response.upgraded or (
            not had_head and response.head is not None and exchange.head.may_hijack
            and response.hijacked
        ):
            self._hijack()
        elif response.complete:
            self._response_done()

    def _response_done(self) -> None:
        self.response_state = ResponseState.DONE
        if self.request_state is RequestState.DONE:
            self._finish_exchange()

    def _collect(self, data: bytes) -> None:
        """COLLECTING, daemon_data: hold the answer for post-hooks; let it through instead if it
        turns out to be one they cannot see (a hijack, a body that is neither JSON nor text)."""
        exchange = self.exchange
        response = exchange.response
        if response.complete:
            self._unasked(data)  # after a whole answer that waits for its request's body
            return
        try:
            response.feed(data)
        except FramingError as exc:
            self._refuse(exc.status, str(exc))
            return
        exchange.response_raw.append(data)
        self._collected()

    def _collected(self) -> None:
        exchange = self.exchange
        response = exchange.response
        head = response.head
        if head is None:
            return
        if response.upgraded or response.hijacked or not (
            is_text(head.content_type) or response.complete and not response.body
        ):
            raw, exchange.response_raw = exchange.response_raw, []
            exchange.forwarded = True
            if self.report is not None:
                exchange.head_at = self.clock()
            self.response_state = ResponseState.STREAMING
            for piece in raw:
                self._to_client(piece)
            if response.upgraded or (exchange.head.may_hijack and response.hijacked):
                self._hijack()
            elif response.complete:
                self._response_done()
            return
        plan = exchange.plan
        if len(response.body) > plan.config.max_body:
            self._refuse(502, f"the daemon's response to {exchange.describe()} exceeds the "
                              f"{plan.config.max_body}-byte limit for post-hooks (max_body) on "
                              f"endpoint {plan.endpoints}")
            return
        if not response.complete:
            return
        if exchange.buffer_json and self.request_state is RequestState.SENDING:
            return  # post-hooks see the request's body: they wait until it is all read
        head_only = exchange.head.method == b"HEAD"
        content_type = head.header(b"content-type")
        sent = ServerResponse(
            None if content_type is None else content_type.decode("latin-1"),
            response.body.decode("utf-8", "replace"),
            head.status,
            _shown(head.headers),
        )
        request = exchange.hooked_request or ClientRequest(
            exchange.head.method.decode("latin-1"), exchange.head.target.decode("latin-1"),
            None, headers=_shown(exchange.head.headers))
        exchange.sent_response = sent
        exchange.head_only = head_only
        self.response_state = ResponseState.POST_HOOKS
        self.effects.pause("hooks")
        self.effects.call_post_hooks(exchange, request, sent)

    def _post_hooks_unasked(self, data: bytes) -> None:
        """POST_HOOKS, daemon_data: the held answer was complete; more is for nobody."""
        self._unasked(data)

    def _answered(self, changed: ServerResponse) -> None:
        """POST_HOOKS, post_hooks_done: send the answer as the hooks left it."""
        exchange = self.exchange
        raw, exchange.response_raw = exchange.response_raw, []
        if changed == exchange.sent_response:
            out = b"".join(raw)
        else:
            head = exchange.response.head
            sent = exchange.sent_response
            out = build_response(
                changed.code,
                head.headers if changed.headers == sent.headers
                else _wire_headers(changed.headers),
                None if changed.content_type is None else changed.content_type.encode("latin-1"),
                (changed.body or "").encode("utf-8"), head_only=exchange.head_only,
            )
        exchange.forwarded = True
        exchange.status = changed.code
        if self.report is not None:
            exchange.head_at = self.clock()
        self._to_client(out)
        self.effects.resume("hooks")
        self._response_done()

    def _post_hooks_failed(self, status: int, message: str) -> None:
        """POST_HOOKS, hooks_failed: the answer is replaced by the error."""
        if self.request_state is not RequestState.DONE:
            self._refuse(status, message)
            return
        self._answer_error(status, message)

    def _daemon_eof(self) -> None:
        """Any HTTP state, daemon_eof: the daemon ends; its connection closes with it."""
        self.effects.close_daemon()

    def _daemon_eof_hijacked(self) -> None:
        self.effects.half_close_client()
        if self.client_eof:
            self._close()

    def _daemon_gone_idle(self) -> None:
        """IDLE or DONE, daemon_gone: between requests (after ``Connection: close``, or idle)
        the client sees its connection end, exactly as it would direct. A request held for
        pre-hooks owes the daemon nothing yet: once approved it goes on a new connection."""
        state = self.request_state
        if state is RequestState.HOLDING or state is RequestState.PRE_HOOKS:
            return
        self._close()

    def _daemon_gone_waiting(self) -> None:
        """WAITING or STREAMING, daemon_gone."""
        exchange = self.exchange
        response = exchange.response
        if not exchange.forwarded or (response is not self.framing and not response.in_message):
            # Nothing, or only whole interim answers (100 Continue), reached the client: a
            # Docker-style error can still follow them. (The connection's shared reader, used
            # for bodiless requests, which get no interim answers, does not follow messages.)
            self._refuse(502, f"the Docker daemon at {self.upstream} closed the connection "
                              "without answering")
        else:
            # Either the end of a response delimited by the connection's end, or a response cut
            # short. Closing (not resetting) delivers what did arrive; a client that was owed
            # more sees the short body, as it would direct.
            self._close()

    def _daemon_gone_collecting(self) -> None:
        """COLLECTING, daemon_gone."""
        response = self.exchange.response
        if response.head is not None and response.end_of_stream():
            # A response whose body ends with the connection (an HTTP/1.0 client's): complete
            # now, so post-hooks see it; the client's connection ends after it, as it would.
            self.draining = True
            self._collected()
            return
        self._refuse(502, f"the Docker daemon at {self.upstream} closed the connection "
                          "without answering")

    def _daemon_gone_post_hooks(self) -> None:
        """POST_HOOKS, daemon_gone: the answer is held whole; it goes out, then the end."""
        self.draining = True

    def _daemon_gone_hijacked(self) -> None:
        self._close()

    # -- both sides -----------------------------------------------------------------------

    def _hijack(self) -> None:
        """The daemon took the connection over: from now on, bytes flow raw both ways."""
        self.request_state = RequestState.HIJACKED
        self.response_state = ResponseState.HIJACKED
        if self.report is not None:
            exchange = self.exchange
            self._report(exchange, exchange.response.status or 101)
        self.exchange = None
        rest = self.reader.take_rest()
        if rest:
            self._to_daemon(rest)
        if self.pipeline_paused:
            self.pipeline_paused = False
            self.effects.resume("pipeline")
        self.eof_forwarded = False
        if self.client_eof:
            self._forward_eof()

    def _refuse(self, status: int, message: str) -> None:
        """Answer with a Docker-style error and close: nothing more from this client is used."""
        exchange = self.exchange
        if self.report is not None and exchange is not None and not exchange.reported:
            if exchange.forwarded:  # a response half sent: the client had its status
                status_sent = exchange.status or exchange.response.status or status
            else:
                status_sent = status
                exchange.head_at = self.clock()
            self._report(exchange, status_sent)
        self._set_closed()
        self._to_client(error_response(status, message))
        if self.client_eof:
            self.effects.close()
        else:
            # The client may still be sending (the body of a refused upload, say). Closing
            # with its bytes unread would make the kernel reset the connection, and a client
            # still writing hears that reset instead of the answer (the docker CLI printed
            # "broken pipe" for a refused plugin create): the answer is followed by a
            # half-close, and the rest of the client's input is read and dropped.
            self.effects.close_lingering()

    def _close(self) -> None:
        self._set_closed()
        self.effects.close()

    def _abort(self) -> None:
        self._set_closed()
        self.effects.abort()

    def _set_closed(self) -> None:
        exchange = self.exchange
        if self.report is not None and exchange is not None and not exchange.reported:
            # Ended with the connection: the status the client had, or 499 (as nginx logs a
            # request whose client went before any answer).
            self._report(exchange, (exchange.status or exchange.response.status or 499)
                         if exchange.forwarded else 499)
        self.request_state = RequestState.CLOSED
        self.response_state = ResponseState.CLOSED

    def _report(self, exchange: Exchange, status: int) -> None:
        exchange.reported = True
        self.report(exchange, status)



def _shown(headers: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """Headers as hooks are shown them: latin-1 text, so they go back to the wire exactly."""
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in headers)


def _wire_headers(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    """Headers an adapter answered with, as the proxy writes them (``hooks.wire`` checked
    them: latin-1 text, no line breaks, the proxy's own headers as they were)."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


RS = RequestState
PS = ResponseState
M = Machine

#: For each client-side event (and those of the proxy itself), the handler in each request
#: state.
REQUEST_TABLE: dict[str, dict[RequestState, Callable]] = {
    "client_data": {
        RS.IDLE: M._read, RS.HOLDING: M._read, RS.PRE_HOOKS: M._read, RS.SENDING: M._read,
        RS.DONE: M._read, RS.HIJACKED: M._raw_to_daemon, RS.CLOSED: M._ignore,
    },
    "client_eof": {
        RS.IDLE: M._client_eof_idle, RS.HOLDING: M._client_eof_unsent,
        RS.PRE_HOOKS: M._client_eof_unsent, RS.SENDING: M._client_eof_sent,
        RS.DONE: M._client_eof_sent, RS.HIJACKED: M._client_eof_sent, RS.CLOSED: M._ignore,
    },
    "pre_hooks_done": {
        RS.IDLE: M._ignore, RS.HOLDING: M._ignore, RS.PRE_HOOKS: M._approved,
        RS.SENDING: M._ignore, RS.DONE: M._ignore, RS.HIJACKED: M._ignore,
        RS.CLOSED: M._ignore,
    },
    "hooks_failed": {
        RS.IDLE: M._ignore, RS.HOLDING: M._ignore, RS.PRE_HOOKS: M._pre_hooks_failed,
        RS.SENDING: M._hooks_failed_after_sending, RS.DONE: M._hooks_failed_after_sending,
        RS.HIJACKED: M._ignore, RS.CLOSED: M._ignore,
    },
    "client_gone": {
        RS.IDLE: M._client_gone, RS.HOLDING: M._client_gone, RS.PRE_HOOKS: M._client_gone,
        RS.SENDING: M._client_gone, RS.DONE: M._client_gone, RS.HIJACKED: M._client_gone,
        RS.CLOSED: M._ignore,
    },
    "daemon_unreachable": {
        RS.IDLE: M._daemon_unreachable, RS.HOLDING: M._daemon_unreachable,
        RS.PRE_HOOKS: M._daemon_unreachable, RS.SENDING: M._daemon_unreachable,
        RS.DONE: M._daemon_unreachable, RS.HIJACKED: M._daemon_unreachable,
        RS.CLOSED: M._ignore,
    },
    "shutdown": {
        RS.IDLE: M._shutdown_idle, RS.HOLDING: M._shutdown_busy, RS.PRE_HOOKS: M._shutdown_busy,
        RS.SENDING: M._shutdown_busy, RS.DONE: M._shutdown_busy, RS.HIJACKED: M._shutdown_busy,
        RS.CLOSED: M._ignore,
    },
    # Streams and hijacked connections may be quiet for hours: timers only end a connection
    # between requests.
    "head_timeout": {
        RS.IDLE: M._head_timeout, RS.HOLDING: M._ignore, RS.PRE_HOOKS: M._ignore,
        RS.SENDING: M._ignore, RS.DONE: M._ignore, RS.HIJACKED: M._ignore, RS.CLOSED: M._ignore,
    },
    "idle_timeout": {
        RS.IDLE: M._idle_timeout, RS.HOLDING: M._ignore, RS.PRE_HOOKS: M._ignore,
        RS.SENDING: M._ignore, RS.DONE: M._ignore, RS.HIJACKED: M._ignore, RS.CLOSED: M._ignore,
    },
    "deadline": {
        RS.IDLE: M._deadline_cut, RS.HOLDING: M._deadline_busy, RS.PRE_HOOKS: M._deadline_busy,
        RS.SENDING: M._deadline_busy, RS.DONE: M._deadline_busy, RS.HIJACKED: M._deadline_cut,
        RS.CLOSED: M._ignore,
    },
}

#: For each daemon-side event, the handler in each response state.
RESPONSE_TABLE: dict[str, dict[ResponseState, Callable]] = {
    "daemon_data": {
        PS.IDLE: M._unasked, PS.WAITING: M._stream, PS.STREAMING: M._stream,
        PS.COLLECTING: M._collect, PS.POST_HOOKS: M._post_hooks_unasked, PS.DONE: M._unasked,
        PS.HIJACKED: M._raw_to_client, PS.CLOSED: M._ignore,
    },
    "daemon_eof": {
        PS.IDLE: M._daemon_eof, PS.WAITING: M._daemon_eof, PS.STREAMING: M._daemon_eof,
        PS.COLLECTING: M._daemon_eof, PS.POST_HOOKS: M._daemon_eof, PS.DONE: M._daemon_eof,
        PS.HIJACKED: M._daemon_eof_hijacked, PS.CLOSED: M._ignore,
    },
    "daemon_gone": {
        PS.IDLE: M._daemon_gone_idle, PS.WAITING: M._daemon_gone_waiting,
        PS.STREAMING: M._daemon_gone_waiting, PS.COLLECTING: M._daemon_gone_collecting,
        PS.POST_HOOKS: M._daemon_gone_post_hooks, PS.DONE: M._daemon_gone_idle,
        PS.HIJACKED: M._daemon_gone_hijacked, PS.CLOSED: M._ignore,
    },
    "post_hooks_done": {
        PS.IDLE: M._ignore, PS.WAITING: M._ignore, PS.STREAMING: M._ignore,
        PS.COLLECTING: M._ignore, PS.POST_HOOKS: M._answered, PS.DONE: M._ignore,
        PS.HIJACKED: M._ignore, PS.CLOSED: M._ignore,
    },
    "hooks_failed": {
        PS.IDLE: M._ignore, PS.WAITING: M._ignore, PS.STREAMING: M._ignore,
        PS.COLLECTING: M._ignore, PS.POST_HOOKS: M._post_hooks_failed, PS.DONE: M._ignore,
        PS.HIJACKED: M._ignore, PS.CLOSED: M._ignore,
    },
}

del RS, PS, M

"""Flow control and the fast path for plain sockets: what the proxy's connections share.

``Pauser`` lets several independent reasons pause one transport's reading; ``send`` and
``direct_reads`` take a plain socket transport's writes and reads past Twisted's layers where a
small request's latency is made.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import interfaces, main, tcp
from zope.interface import implementer


@implementer(interfaces.IPushProducer)
class Pauser:
    """Pauses a transport's reading for several independent reasons at once.

    A transport's own pause/resume is a single flag; the proxy pauses the same client for flow
    control, while a daemon connection is being opened and while pipelined requests wait, and
    each of those must not undo the others.
    """

    __slots__ = ("transport", "reasons")

    def __init__(self, transport: interfaces.IPushProducer) -> None:
        self.transport = transport
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        """Stop reading until ``resume(reason)`` (and every other reason is gone)."""
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        """Drop one reason to pause; read again once none is left."""
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()

    def resume_all(self) -> None:
        """Drop every reason and read again (a connection that only drains what is left)."""
        if self.reasons:
            self.reasons.clear()
            self.transport.resumeProducing()

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's interface
        """The consumer's write buffer is full."""
        self.pause("flow")

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's interface
        """The consumer's write buffer drained."""
        self.resume("flow")

    def stopProducing(self) -> None:  # noqa: N802 - Twisted's interface
        """The consumer went away; the connection objects handle that themselves."""


def send(transport: interfaces.ITransport, data: bytes) -> None:
    """Write ``data`` to ``transport``, sending at once when nothing is queued before it.

    Twisted queues every write until the reactor's next turn finds the socket writable. For a
    small request or answer that extra turn (and its two epoll_ctl calls) costs more than the
    rest of the proxy's work, so when the transport's buffer is empty the bytes go straight to
    the socket and only what the kernel did not take is queued.
    """
    # Only a plain socket transport: a TLS transport (a protocol wrapper) answers
    # ``.socket`` with the raw socket beneath it, and bytes sent there would bypass the
    # encryption.
    if (
        not isinstance(transport, tcp.Connection)
        or transport.dataBuffer
        or transport._tempDataBuffer
        or not transport.connected
        or transport.disconnecting
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        # Let Twisted meet the error on its own write and close the connection its usual way.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


def direct_reads(transport: object, receive: Callable[[bytes], None]) -> None:
    """Hand a plain socket transport's reads straight to ``receive``.

    Twisted delivers a read through several layers (the transport's ``doRead`` and
    ``_dataReceived``, the endpoint's wrapping protocol, then ours), and reads unix sockets with
    ``recvmsg`` so that protocols can receive file descriptors, which the Docker API never
    passes. On a small request each layer is a measurable share of the proxy's latency, so reads
    of a TCP or unix socket go from ``recv`` to the proxy in one call. Everything else about the
    transport (writes, pausing, half-close, loss) stays Twisted's; TLS transports are left alone.
    """
    if not isinstance(transport, tcp.Connection):
        return
    recv = transport.socket.recv
    size = transport.bufferSize

    def do_read() -> object:
        try:
            data = recv(size)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if data:
            receive(data)
            return None
        return main.CONNECTION_DONE

    transport.doRead = do_read


def no_delay(transport: object) -> None:
    # Small request/response pairs must not wait for Nagle's algorithm; unix sockets have none.
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass

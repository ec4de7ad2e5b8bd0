"""TLS connections that can be half-closed, as the Docker API's hijacked streams need: those a
TLS listener accepts (``allow_half_close``) and those to an ``ssl:`` upstream
(``half_closeable_client``).

A docker client ends the stdin of ``docker run``, ``attach`` or ``exec`` by closing its writing
side; over TLS, Go's ``tls.Conn.CloseWrite`` does that with a close_notify alert and keeps
reading the container's output. Twisted's TLS layer takes a close_notify as the end of the whole
connection, which would cut that output off. ``HalfCloseableTLS`` passes a close_notify on as
``readConnectionLost`` to a protocol that can take a half-close, and sends its own close_notify
on ``loseWriteConnection``; the TCP connection ends when both sides have sent theirs.

It also keeps a pause a pause. Twisted's TLS layer pauses the socket beneath it, but still hands
the protocol every record of the read it is working through, and then the close_notify behind
them: a client that pipes stdin sends the last of it and its close_notify together, so the end
of input arrived while the proxy was holding the client back because the daemon's socket was
full. Twisted's transport to the daemon then answers its drained buffer by resuming the client
rather than by the half-close asked for meanwhile, and the daemon never heard stdin end (the
hang of ``seq 100000 | docker run -i ... wc -l`` on a busy machine). ``HalfCloseableTLS``
delivers nothing while paused, as a paused socket does: what is left of a read waits, decrypted
on demand, until ``resumeProducing``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from OpenSSL import crypto
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet import defer
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
)
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

#: What one ``recv`` from the TLS connection may return, as Twisted's own TLS layer reads.
_READ_SIZE = 2**15


class HalfCloseableTLS(TLSMemoryBIOProtocol):
    """Twisted's TLS protocol, with a close_notify in each direction taken as a half-close."""

    _read_closed = False
    _write_closed = False
    #: The protocol asked for no more data (``pauseProducing``) and has not asked again.
    _paused = False
    #: ``_flushReceiveBIO`` is handing records over: a resume from inside the protocol's
    #: ``dataReceived`` lets that loop go on rather than starting another within it.
    _delivering = False
    #: The connection is gone: what was read is handed on whatever the protocol asks.
    _gone = False

    def pauseProducing(self) -> None:  # noqa: N802 - Twisted's name
        """Stop reading the socket, and stop handing on what was already read."""
        self._paused = True
        if not self.disconnecting:  # a closing connection reads on for the peer's ending
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802 - Twisted's name
        """Hand on what was left of the last read (data, then a close_notify), then read on."""
        self._paused = False
        if self._lostTLSConnection:
            return
        if self._handshakeDone and not self._delivering:
            self._flushReceiveBIO()
        if not self._paused:
            self.transport.resumeProducing()

    def connectionLost(self, reason: Failure = None) -> None:  # noqa: N802 - Twisted's name
        # The connection is gone: whatever was read is handed on, paused or not, as Twisted's
        # TLS layer does before it reports the loss.
        self._gone = True
        super().connectionLost(reason)

    def _flushReceiveBIO(self) -> None:  # noqa: N802 - Twisted's name
        if self._read_closed or self._delivering:
            self._flushSendBIO()
            return
        self._delivering = True
        try:
            self._deliver()
        finally:
            self._delivering = False
        self._flushSendBIO()

    def _deliver(self) -> None:
        """Hand the protocol the records read so far, one ``recv`` at a time, until none is
        whole, the protocol pauses, or the peer's close_notify ends the reading."""
        while not self._lostTLSConnection and (
                self._gone or not self._paused or self.disconnecting):
            try:
                data = self._tlsConnection.recv(_READ_SIZE)
            except WantReadError:
                break
            except ZeroReturnError:
                if (not self._write_closed and not self.disconnecting
                        and IHalfCloseableProtocol.providedBy(self.wrappedProtocol)):
                    # The peer is done writing, not reading: say so, and keep the connection.
                    self._read_closed = True
                    self._flushSendBIO()
                    self.wrappedProtocol.readConnectionLost()
                    return
                # Both sides have now sent close_notify (or the protocol wants the whole
                # connection to end): Twisted's own ending.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted and (self._gone or not self._paused):
                    ProtocolWrapper.dataReceived(self, data)
                # else closing while paused: dropped, as the socket beneath would drop it

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        """Send close_notify once what was written has gone, and end the connection when the
        peer's comes (or the TCP connection ends).

        That end must be read for even if the protocol paused: the proxy pauses a client it
        refuses, and its connection stayed open, unread, until the proxy stopped.
        """
        super().loseConnection()
        if self.disconnecting and not (self._lostTLSConnection or self._aborted):
            if self._handshakeDone and not self._delivering:
                self._flushReceiveBIO()
            if not self._lostTLSConnection:
                self.transport.resumeProducing()

    def loseWriteConnection(self) -> None:  # noqa: N802 - Twisted's name
        """Send close_notify once what was written has gone; keep reading the peer's data."""
        if self._write_closed or self.disconnecting or not self.connected:
            return
        if not self._handshakeDone or self._appSendBuffer:
            # Writes still wait on the handshake: a close_notify cannot overtake them, and an
            # ending before the handshake is no half-close. End the whole connection cleanly.
            self.loseConnection()
            return
        self._write_closed = True
        # Sends our close_notify; when the peer's has already come, shutdown() completes and
        # Twisted closes the TCP connection.
        self._shutdownTLS()


def allow_half_close(port: IListeningPort) -> None:
    """Make the TLS connections that ``port`` accepts from now on ``HalfCloseableTLS``; a port
    without TLS is left as it is."""
    factory = getattr(port, "factory", None)
    if isinstance(factory, TLSMemoryBIOFactory):
        factory.protocol = HalfCloseableTLS


@implementer(IStreamClientEndpoint)
class HalfCloseableTLSClient:
    """An ``ssl:`` client endpoint whose connections are ``HalfCloseableTLS``.

    Twisted's own sends no close_notify on ``loseWriteConnection``: it half-closes the TCP
    connection beneath TLS, which a TLS daemon reads as the connection cut short, not as the
    end of stdin; and it hands on a close_notify as the end of the whole connection.
    """

    def __init__(self, endpoint: SSL4ClientEndpoint) -> None:
        # What the endpoint description was parsed into (Twisted keeps it private).
        self._reactor = endpoint._reactor
        self._host = endpoint._host
        self._port = endpoint._port
        self._creator = endpoint._sslContextFactory
        self._timeout = endpoint._timeout
        self._bind = endpoint._bindAddress

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred:  # noqa: N802, N803
        """Connect over TCP and start TLS; fires with the protocol ``protocolFactory`` built."""
        factory = TLSMemoryBIOFactory(self._creator, True, protocolFactory)
        factory.protocol = HalfCloseableTLS
        tcp = TCP4ClientEndpoint(self._reactor, self._host, self._port, self._timeout,
                                 self._bind)
        return tcp.connect(factory).addCallback(lambda tls: tls.wrappedProtocol)


def half_closeable_client(endpoint: IStreamClientEndpoint) -> IStreamClientEndpoint:
    """``endpoint``, with connections that can be half-closed if it is an ``ssl:`` one."""
    if isinstance(endpoint, SSL4ClientEndpoint):
        return HalfCloseableTLSClient(endpoint)
    return endpoint


class TLSFileError(ValueError):
    """A certificate or key file that cannot be read or used; the message names it."""


@dataclass(frozen=True)
class ServerTLS:
    """The ``--tls``/``--tlsverify`` settings of the ``tcp://`` listeners: the proxy's
    certificate (``cert``, possibly followed by its chain) and key, and with ``verify`` the
    authorities (``ca``) a client's certificate must be signed by, as dockerd's flags."""

    cert: str
    key: str
    ca: str | None = None
    verify: bool = False

    def options(self) -> CertificateOptions:
        """The OpenSSL context factory for a listener: it asks for, and then requires, a client
        certificate that ``ca`` signed when ``verify``; ``TLSFileError`` if a file is unusable."""
        chain = _certificates(self.cert, "--tlscert")
        key_pem = _read(self.key, "--tlskey")
        try:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
        except crypto.Error:
            raise TLSFileError(f"--tlskey: {self.key} holds no PEM private key") from None
        authorities = _certificates(self.ca, "--tlscacert") if self.verify and self.ca else None
        if self.verify and not authorities:
            raise TLSFileError("--tlsverify needs --tlscacert, the authority clients' "
                               "certificates are signed by")
        try:
            options = CertificateOptions(
                privateKey=key, certificate=chain[0], extraCertChain=chain[1:] or None,
                verify=self.verify, caCerts=authorities, requireCertificate=self.verify,
            )
            # Built now, not at the first client: a key that is not the certificate's is
            # a usage error at start.
            options.getContext()
        except Error as exc:
            raise TLSFileError(f"--tlscert {self.cert} and --tlskey {self.key} do not go "
                               f"together: {exc}") from None
        return options


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TLSFileError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def _certificates(path: str, flag: str) -> list[crypto.X509]:
    """Every PEM certificate in the file at ``path``, in order."""
    from cryptography import x509

    pem = _read(path, flag)
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TLSFileError(f"{flag}: {path} holds no PEM certificate") from None
    return [crypto.X509.from_cryptography(certificate) for certificate in found]


def tls_server_endpoint(reactor: object, port: int, interface: str, backlog: int,
                        settings: ServerTLS) -> SSL4ServerEndpoint:
    """A TLS server endpoint on ``interface:port`` with ``settings``; a port it listens on must
    be passed to ``allow_half_close`` like any other TLS listener's."""
    return SSL4ServerEndpoint(reactor, port, settings.options(), backlog=backlog,
                              interface=interface)

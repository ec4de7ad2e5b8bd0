"""Serving from several worker processes (``powerstrip serve --workers N``).

One Python process forwards on one core: a burst of connections is as fast as one thread can
accept them and set up their daemon connections. With N workers the parent binds every listener
itself and starts N copies of ``powerstrip serve`` that each adopt those same listening sockets
and run their own reactor, adapters file and limits. The kernel hands each connection the
listeners accept to one of the workers waiting on them.

The parent serves nothing: it waits until every worker says it is listening (a line on a pipe of
its own), prints the ``export DOCKER_HOST=...`` line, passes SIGTERM, SIGINT and SIGHUP on to the
workers, and exits 0 once they all have exited 0. A worker that dies on its own is not started
again: the parent logs it, stops the others and exits non-zero, for whatever supervises the
proxy (systemd, a container runtime) to restart the whole.

Only plain TCP and unix listeners can be shared so; Twisted endpoint descriptions (``ssl:``,
``systemd:``) are bound by Twisted in each process and are refused with more than one worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet import tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.protocols.tls import TLSMemoryBIOFactory

from powerstrip.proxy.addresses import LISTEN_BACKLOG, Address
from powerstrip.proxy.tls import ServerTLS

log = logging.getLogger("powerstrip")

#: What a worker writes on its readiness pipe once it listens.
READY = b"ready\n"
#: Linux's prctl option that signals a child when its parent dies.
_PR_SET_PDEATHSIG = 1


def shareable(address: Address) -> bool:
    """Whether workers can share a listener at ``address``: plain TCP and unix only."""
    return address.kind in ("tcp", "unix")


def worker_share(max_connections: int, workers: int) -> int:
    """Each worker's part of ``--max-connections`` (0, no limit, stays 0): the whole divided
    among the workers, at least one each, so that together they never hold more."""
    if not max_connections:
        return 0
    return max(1, max_connections // workers)


@dataclass
class Listener:
    """A listening socket the parent bound, and what ``docker_host_line`` names it by."""

    address: Address
    sock: socket.socket
    #: The unix socket file's inode, so that only our own file is removed at the end.
    inode: int = 0

    @property
    def bound(self) -> object:
        """The bound address, as a Twisted port's ``getHost()`` gives it."""
        name = self.sock.getsockname()
        if self.sock.family == socket.AF_UNIX:
            return UNIXAddress(name)
        if self.sock.family == socket.AF_INET6:
            return IPv6Address("TCP", name[0], name[1])
        return IPv4Address("TCP", name[0], name[1])

    def remove_file(self) -> None:
        """Remove the unix socket file if it is still the one bound here."""
        if self.address.kind != "unix":
            return
        try:
            if os.stat(self.address.path).st_ino == self.inode:
                os.unlink(self.address.path)
        except FileNotFoundError:
            pass


def bind(address: Address, group_id: int | None = None, mode: int = 0o660) -> Listener:
    """Bind and listen on a TCP or unix ``address`` as Twisted's endpoints do for one process
    (``server_description``): SO_REUSEADDR, the same backlog, a unix file of ``mode`` owned by
    ``group_id``. The socket is non-blocking, as an adopted one must be."""
    if address.kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address.path)
            os.chmod(address.path, mode)
            if group_id is not None:
                os.chown(address.path, -1, group_id)
            inode = os.stat(address.path).st_ino
            sock.listen(LISTEN_BACKLOG)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return Listener(address, sock, inode)
    host = address.host or "127.0.0.1"
    family, kind, proto, _, where = socket.getaddrinfo(
        host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return Listener(address, sock)


def adopt(reactor: object, fd: int, factory: object, mode: int = 0o660,
          tls: ServerTLS | None = None) -> object:
    """Listen on the inherited listening socket ``fd`` with ``factory``; the listening port.
    With ``tls`` (a TCP socket) its connections speak TLS with those settings, as a
    ``--tls``/``--tlsverify`` listener of a single process does.

    TCP goes through the reactor's ``adoptStreamPort``. For a unix socket that would listen
    again with Twisted's default backlog of 50, shrinking the parent's, and make the file
    0666: the same port is built here with this backlog and mode before it starts. ``fd``
    itself is left open (Twisted listens on a duplicate).
    """
    with socket.socket(fileno=os.dup(fd)) as probe:
        family = probe.family
    if family != socket.AF_UNIX:
        if tls is not None:
            factory = TLSMemoryBIOFactory(tls.options(), False, factory)
        return reactor.adoptStreamPort(fd, family, factory)
    port = _SharedUNIXPort._fromListeningDescriptor(reactor, fd, factory)
    port.backlog = LISTEN_BACKLOG
    port.mode = mode
    port.startListening()
    return port


class _SharedUNIXPort(unix.Port):
    """A unix listener shared with other workers: stopping it leaves the socket file, which
    the parent removes once every worker has stopped (Twisted's removes it, and the second
    worker to stop then failed before its connections were closed)."""

    def connectionLost(self, reason: object) -> None:  # noqa: N802 - Twisted's name
        tcp.Port.connectionLost(self, reason)


def say_ready(fd: int) -> None:
    """Tell the parent on its pipe ``fd`` that this worker listens."""
    try:
        os.write(fd, READY)
    finally:
        os.close(fd)


def _die_with_parent() -> None:
    """In a worker, before it runs: a SIGTERM (a graceful stop) if the parent is killed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"


class Supervisor:
    """Starts the workers and follows them until they have all exited (see the module)."""

    def __init__(self, listeners: Sequence[Listener], command: Sequence[str],
                 workers: int) -> None:
        self.listeners = list(listeners)
        self.command = list(command)
        self.count = workers
        #: Running workers by pid.
        self.running: dict[int, subprocess.Popen] = {}
        #: Workers that said they listen: they have their SIGHUP handler by then.
        self.ready: set[int] = set()
        #: A stop was asked for (a signal forwarded, or a worker failed).
        self.stopping = False
        self.failed = False

    def _forward(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            self.stopping = True
        for pid in list(self.running):
            if signum == signal.SIGHUP and pid not in self.ready:
                continue  # it reads the file as it starts anyway
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _fail(self, why: str) -> None:
        if not self.failed:
            log.error("%s; stopping the other workers (a worker is not restarted)", why)
        self.failed = True
        if not self.stopping:
            self._forward(signal.SIGTERM, None)

    def _start(self) -> dict[int, subprocess.Popen]:
        """Start every worker; its readiness pipe's reading end -> the worker."""
        fds = [listener.sock.fileno() for listener in self.listeners]
        pipes: dict[int, subprocess.Popen] = {}
        for _ in range(self.count):
            read_end, write_end = os.pipe()
            command = [*self.command, "--worker-fds", ",".join(map(str, fds)),
                       "--ready-fd", str(write_end)]
            try:
                # Its own process group: a terminal's Ctrl-C reaches the parent alone, which
                # passes it on once.
                proc = subprocess.Popen(command, pass_fds=(*fds, write_end), process_group=0,
                                        preexec_fn=_die_with_parent)
            finally:
                os.close(write_end)
            self.running[proc.pid] = proc
            pipes[read_end] = proc
        return pipes

    def _await_ready(self, pipes: dict[int, subprocess.Popen]) -> bool:
        """Wait until every worker says it listens; False if one exits first or a stop came."""
        selector = selectors.DefaultSelector()
        for fd in pipes:
            selector.register(fd, selectors.EVENT_READ)
        waiting = dict(pipes)
        try:
            while waiting and not self.stopping:
                for key, _ in selector.select(0.5):
                    fd = key.fd
                    data = os.read(fd, len(READY))
                    selector.unregister(fd)
                    proc = waiting.pop(fd)
                    if data != READY:
                        self._fail(f"worker {proc.pid} exited before it was listening")
                        return False
                    self.ready.add(proc.pid)
        finally:
            selector.close()
            for fd in pipes:
                os.close(fd)
        return not waiting

    def _reap(self) -> None:
        """Wait for every worker to exit; a worker exiting unasked stops the others."""
        while self.running:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            proc = self.running.pop(pid, None)
            if proc is None:
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            if not self.stopping:
                self._fail(f"worker {pid} {_describe(status)}")
            elif proc.returncode != 0:
                log.error("worker %d %s", pid, _describe(status))
                self.failed = True

    def run(self, ready_line: str) -> int:
        """Start the workers, print ``ready_line`` once they all listen, and wait for them;
        the exit status: 0 when every worker stopped on request with 0, else 1."""
        previous = {signum: signal.signal(signum, self._forward)
                    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            try:
                pipes = self._start()
            finally:
                # The workers hold the listeners now; once they stop listening, the sockets
                # close and new connections are refused rather than queued for nobody.
                for listener in self.listeners:
                    listener.sock.close()
            if self.stopping:  # a signal came while the later workers were being started
                self._forward(signal.SIGTERM, None)
            if self._await_ready(pipes):
                log.info("%d workers (pids %s)", self.count,
                         " ".join(str(pid) for pid in self.running))
                print(ready_line, flush=True)
            self._reap()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for proc in self.running.values():  # only when interrupted by an exception
                proc.kill()
                proc.wait()
            for listener in self.listeners:
                listener.remove_file()
        return 1 if self.failed else 0


def worker_command(verbose: bool, options: Sequence[str]) -> list[str]:
    """The command line that runs one worker: ``powerstrip serve`` with ``options``."""
    return [sys.executable, "-m", "powerstrip", *(["-v"] if verbose else []), "serve",
            *options]

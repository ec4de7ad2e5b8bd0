"""The reactor the proxy runs on: Twisted's epoll reactor with a leaner loop for small requests.

Every small request costs the proxy two trips round the reactor loop (the client's request, the
daemon's answer), and on a proxy that forwards bytes untouched the loop's own bookkeeping is a
measurable share of the latency it adds (see docs/performance.md). This reactor keeps Twisted's
behaviour and cuts that bookkeeping:

- timed calls are only looked at when one is due or new, instead of twice per turn;
- a plain read event goes straight to the selectable's ``doRead``, without the logging context
  Twisted builds per event for legacy ``log.msg`` (Powerstrip logs through ``logging``);
- it can busy-poll (``busy_poll``): when the proxy says an answer is due soon, the next poll
  does not sleep at once but keeps polling for a short while first, yielding the CPU to
  whatever else is runnable between polls. An answer that comes within that while is picked
  up without the wake-up of a sleeping process, which on a virtual machine is a large part of
  a small request's cost.

The proxy says so only for a client that sends its requests back to back (:class:`BackToBack`):
measured on two vCPUs, spinning for a client that pauses between requests makes its requests
slower, not faster (docs/performance.md). A request starts at most two spins (one for its
answer, one for the next request), a stream's chunks and a hijacked connection's bytes none,
so the CPU spent spinning is bounded by the request rate of back-to-back clients.

Everything else is the stock EPollReactor.
"""

from __future__ import annotations

import errno
import sys
from math import inf
from os import sched_yield
from select import EPOLLIN
from time import perf_counter

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.logger import Logger

_log = Logger()

#: Twisted's cap on one sleep (epoll_wait takes milliseconds in a C int).
_LONGEST_SLEEP = 2147483


class DirectEPollReactor(epollreactor.EPollReactor):
    """EPollReactor with a loop that does per turn only the timer work that is due.

    ``busy_poll`` is how many seconds to keep polling without sleeping after
    :meth:`expect_soon` (0: never).
    """

    def __init__(self, busy_poll: float = 0.0) -> None:
        super().__init__()
        self.busy_poll = busy_poll
        self._expecting = False

    def expect_soon(self) -> None:
        """Say that I/O is due within the busy-poll while: the next poll spins before it sleeps."""
        self._expecting = True

    def mainLoop(self) -> None:  # noqa: N802 - Twisted's name
        """Run until stopped: timed calls when due, then one poll for I/O."""
        while self._started:
            try:
                self._turns()
            except BaseException:  # noqa: BLE001 - the loop must survive, as Twisted's does
                _log.failure("Unexpected error in main loop")

    def _turns(self) -> None:
        seconds = self.seconds
        pending = self._pendingTimedCalls
        while self._started:
            if self._pendingTimedCalls is not pending:
                pending = self._pendingTimedCalls  # rebuilt after many cancellations
            now = seconds()
            if (self.threadCallQueue or self._newTimedCalls or self._justStopped
                    or (pending and pending[0].time <= now)):
                self.runUntilCurrent()
                if self._newTimedCalls:  # scheduled by the calls just run
                    self._insertNewDelayedCalls()
                pending = self._pendingTimedCalls
                now = seconds()
            if not self.running:
                timeout: float | None = 0.0
            elif pending:
                timeout = pending[0].time - now
                if timeout < 0.0:
                    timeout = 0.0
                elif timeout > _LONGEST_SLEEP:
                    timeout = _LONGEST_SLEEP
            else:
                timeout = None
            self.doPoll(timeout)

    def doPoll(self, timeout: float | None) -> None:  # noqa: N802 - Twisted's name
        """Poll once and dispatch the ready file descriptors."""
        if timeout is None:
            timeout = -1
        poll = self._poller.poll
        most = len(self._selectables)
        # A spin is earned anew each turn: one that found nothing, or found I/O nobody said
        # was due, ends with the next poll blocking; a turn that polled without waiting (timed
        # calls were due) and found nothing keeps the expectation for the next. No turn spins
        # while a write, any connection's, waits for a full socket: the proxy is then busy
        # with a slow reader, which a spin cannot hurry but would take a CPU from.
        expecting = self._expecting
        try:
            if expecting and timeout != 0 and self.busy_poll > 0 and not self._writes:
                # Spin no longer than the next timed call is due, then give the loop back
                # so that it runs the call or blocks.
                length = self.busy_poll if timeout < 0 else min(self.busy_poll, timeout)
                deadline = perf_counter() + length
                ready = poll(0, most)
                while not ready and perf_counter() < deadline:
                    # The client and dockerd share the same few CPUs: one woken onto this
                    # CPU runs at once instead of waiting out the spin.
                    sched_yield()
                    ready = poll(0, most)
            else:
                ready = poll(timeout, most)
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        if ready or timeout != 0:
            self._expecting = False
        selectables = self._selectables
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                if event != EPOLLIN:
                    self._doReadOrWrite(selectable, fd, event)
                    continue
                # A plain read: what _doReadOrWrite does for it, without its checks for the
                # cases (hang-up, write readiness, a closed descriptor) the event rules out.
                try:
                    why = selectable.doRead()
                except BaseException:
                    why = sys.exc_info()[1]
                    _log.failure("while reading from {selectable!r}", selectable=selectable)
                if why:
                    self._disconnectSelectable(selectable, why, True)
            except BaseException:
                # As Twisted's own dispatch: a failure while disconnecting one selectable
                # (a protocol's connectionLost) is logged, and the other events still run.
                _log.failure("while handling {selectable!r}", selectable=selectable)

    doIteration = doPoll


class BackToBack:
    """Whether a keep-alive client sends its next request within ``window`` seconds of the
    previous answer: the clients for which busy-polling pays.

    Sans-IO: the caller passes the time. The first request of a connection is not back to back.
    """

    __slots__ = ("window", "finished", "quick")

    def __init__(self, window: float) -> None:
        self.window = window
        self.finished = -inf
        #: The latest request came within the window of the previous answer.
        self.quick = False

    def request(self, now: float) -> bool:
        """A request began at ``now``; whether it came back to back."""
        self.quick = now - self.finished <= self.window
        return self.quick

    def answered(self, now: float) -> bool:
        """The answer to the latest request ended at ``now``, the connection stays open;
        whether its next request is likely to come back to back."""
        self.finished = now
        return self.quick


def install(busy_poll: float = 0.0) -> DirectEPollReactor:
    """Install the reactor; must run before anything imports ``twisted.internet.reactor``."""
    reactor = DirectEPollReactor(busy_poll)
    installReactor(reactor)
    return reactor

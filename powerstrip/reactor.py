"""The reactor the proxy runs on: Twisted's epoll reactor with a leaner loop for small requests.

Every small request costs the proxy two trips round the reactor loop (the client's request, the
daemon's answer), and on a proxy that forwards bytes untouched the loop's own bookkeeping is a
measurable share of the latency it adds (see docs/performance.md). This reactor keeps Twisted's
behaviour and cuts that bookkeeping:

- timed calls are only looked at when one is due or new, instead of twice per turn;
- a plain read event goes straight to the selectable's ``doRead``, without the logging context
  Twisted builds per event for legacy ``log.msg`` (Powerstrip logs through ``logging``).

Everything else is the stock EPollReactor.
"""

from __future__ import annotations

import errno
import sys
from select import EPOLLIN

from twisted.internet import epollreactor
from twisted.internet.main import installReactor
from twisted.logger import Logger

_log = Logger()

#: Twisted's cap on one sleep (epoll_wait takes milliseconds in a C int).
_LONGEST_SLEEP = 2147483


class DirectEPollReactor(epollreactor.EPollReactor):
    """EPollReactor with a loop that does per turn only the timer work that is due."""

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
        try:
            ready = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
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


def install() -> DirectEPollReactor:
    """Install the reactor; must run before anything imports ``twisted.internet.reactor``."""
    reactor = DirectEPollReactor()
    installReactor(reactor)
    return reactor

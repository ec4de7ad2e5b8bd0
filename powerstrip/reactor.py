"""The reactor the proxy runs on: Twisted's epoll reactor, minus per-event log bookkeeping.

Twisted's epoll reactor wraps every readiness event in ``log.callWithLogger``, which builds a
logging context so legacy ``log.msg`` calls can say which connection they came from. Powerstrip
logs through the standard ``logging`` module and never reads that context, and on a small request
the wrapper costs a measurable share of the proxy's latency (see docs/performance.md), so this
reactor dispatches events directly. Everything else is the stock EPollReactor.
"""

from __future__ import annotations

import errno

from twisted.internet import epollreactor
from twisted.internet.main import installReactor


class DirectEPollReactor(epollreactor.EPollReactor):
    """EPollReactor that calls the ready selectables without a logging context per event."""

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
        dispatch = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is not None:
                dispatch(selectable, fd, event)

    doIteration = doPoll


def install() -> DirectEPollReactor:
    """Install the reactor; must run before anything imports ``twisted.internet.reactor``."""
    reactor = DirectEPollReactor()
    installReactor(reactor)
    return reactor

"""The proxy's reactor: Twisted's epoll reactor with a leaner loop must behave as Twisted's."""

from __future__ import annotations

import os
import threading

import pytest
from twisted.internet import defer, main

from powerstrip.reactor import DirectEPollReactor

# The thread method: a hung reactor loop would swallow the signal method's exception.
pytestmark = pytest.mark.timeout(10, method="thread")


def test_timed_calls_scheduled_by_timed_calls_and_by_shutdown_all_run():
    reactor = DirectEPollReactor()
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        reactor.callLater(0, second)  # scheduled while timed calls run

    def second() -> None:
        seen.append("second")
        reactor.callLater(0.01, reactor.stop)

    def before_shutdown() -> defer.Deferred:
        # Shutdown waits for this Deferred, and listening ports close the same way: through a
        # call scheduled while timed calls run. If the loop missed it, it would sleep forever.
        done: defer.Deferred = defer.Deferred()
        reactor.callLater(0, lambda: (seen.append("during shutdown"), done.callback(None)))
        return done

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    reactor.callLater(0.01, first)
    reactor.run(installSignalHandlers=False)
    assert seen == ["first", "second", "during shutdown"]


def test_calls_from_threads_and_reads_are_dispatched():
    reactor = DirectEPollReactor()
    read_fd, write_fd = os.pipe()
    got: list[object] = []

    class Reader:
        def fileno(self) -> int:
            return read_fd

        def logPrefix(self) -> str:  # noqa: N802 - Twisted's interface
            return "pipe"

        def doRead(self) -> None:  # noqa: N802 - Twisted's interface
            got.append(os.read(read_fd, 100))
            reactor.removeReader(self)
            threading.Thread(target=reactor.callFromThread, args=(reactor.stop,)).start()

        def connectionLost(self, reason: object) -> None:  # noqa: N802
            pass

    reactor.addReader(Reader())
    reactor.callLater(0.01, os.write, write_fd, b"ping")
    reactor.run(installSignalHandlers=False)
    os.close(read_fd)
    os.close(write_fd)
    assert got == [b"ping"]


def test_a_failing_read_disconnects_that_reader_and_the_loop_goes_on():
    reactor = DirectEPollReactor()
    read_fd, write_fd = os.pipe()
    lost: list[object] = []

    class Broken:
        def fileno(self) -> int:
            return read_fd

        def logPrefix(self) -> str:  # noqa: N802
            return "broken"

        def doRead(self) -> None:  # noqa: N802
            raise RuntimeError("boom")

        def connectionLost(self, reason: object) -> None:  # noqa: N802
            lost.append(reason)

    reactor.addReader(Broken())
    reactor.callLater(0.01, os.write, write_fd, b"x")
    reactor.callLater(0.3, reactor.stop)
    reactor.run(installSignalHandlers=False)
    os.close(read_fd)
    os.close(write_fd)
    assert len(lost) == 1 and "boom" in str(lost[0])


def test_a_failing_connection_lost_is_logged_and_other_readers_still_read():
    reactor = DirectEPollReactor()
    bad_r, bad_w = os.pipe()
    good_r, good_w = os.pipe()
    got: list[bytes] = []

    class Failing:
        def fileno(self) -> int:
            return bad_r

        def logPrefix(self) -> str:  # noqa: N802
            return "failing"

        def doRead(self) -> object:  # noqa: N802
            os.read(bad_r, 100)
            return main.CONNECTION_DONE

        def connectionLost(self, reason: object) -> None:  # noqa: N802
            raise RuntimeError("connectionLost failed")

    class Good(Failing):
        def fileno(self) -> int:
            return good_r

        def doRead(self) -> None:  # noqa: N802
            got.append(os.read(good_r, 100))
            reactor.removeReader(self)
            reactor.callLater(0, reactor.stop)

    reactor.addReader(Failing())
    reactor.addReader(Good())
    os.write(bad_w, b"x")
    os.write(good_w, b"y")
    reactor.run(installSignalHandlers=False)
    for fd in (bad_r, bad_w, good_r, good_w):
        os.close(fd)
    assert got == [b"y"]

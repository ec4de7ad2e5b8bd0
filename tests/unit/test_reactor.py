"""The proxy's reactor: Twisted's epoll reactor with a leaner loop must behave as Twisted's."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, main

from powerstrip.proxy.reactor import BackToBack, DirectEPollReactor

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


class _RecordingPoller:
    """The reactor's epoll object, recording each poll's timeout and whether it found I/O."""

    def __init__(self, poller: object) -> None:
        self._poller = poller
        self.polls: list[tuple[float, bool]] = []

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list:
        ready = self._poller.poll(timeout, maxevents)
        self.polls.append((timeout, bool(ready)))
        return ready

    def __getattr__(self, name: str) -> object:
        return getattr(self._poller, name)


class _PipeReader:
    """Reads a pipe, then calls ``after_read`` (as the proxy may say the next read is due)."""

    def __init__(
        self, fd: int, got: list[bytes], after_read: Callable[[], None] | None = None,
    ) -> None:
        self.fd, self.got, self.after_read = fd, got, after_read

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:  # noqa: N802
        return "pipe"

    def doRead(self) -> None:  # noqa: N802
        self.got.append(os.read(self.fd, 100))
        if self.after_read is not None:
            self.after_read()

    def connectionLost(self, reason: object) -> None:  # noqa: N802
        pass


class _StuckWriter(_PipeReader):
    """A write waiting for a full pipe, as the proxy's to a slow reader."""

    def doWrite(self) -> None:  # noqa: N802
        pass


def _two_writes(
    busy_poll: float, expect: bool = True, stuck_write: bool = False,
) -> tuple[list[tuple[float, bool]], list[bytes]]:
    """Write "one" to a pipe the reactor reads, then "two" 20 ms later from a thread; stop
    ``busy_poll`` + 200 ms after "two" was read. Returns the polls and what was read."""
    reactor = DirectEPollReactor(busy_poll)
    poller = reactor._poller = _RecordingPoller(reactor._poller)
    read_fd, write_fd = os.pipe()
    full_r, full_w = os.pipe()
    os.set_blocking(full_w, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(full_w, b"x" * 65536)
    got: list[bytes] = []
    writer = threading.Timer(0.02, os.write, args=(write_fd, b"two"))

    def read() -> None:
        if expect:
            reactor.expect_soon()
        if len(got) == 2:
            reactor.callLater(busy_poll + 0.2, reactor.stop)

    reader = _PipeReader(read_fd, got, read)
    reactor.addReader(reader)
    if stuck_write:
        reactor.addWriter(_StuckWriter(full_w, []))

    def first() -> None:
        os.write(write_fd, b"one")
        writer.start()

    reactor.callLater(0.01, first)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        writer.cancel()
        if writer.is_alive():
            writer.join()
        for fd in (read_fd, write_fd, full_r, full_w):
            os.close(fd)
    return poller.polls, got


def _found_by(polls: list[tuple[float, bool]]) -> list[float]:
    """The timeouts of the polls that found I/O."""
    return [timeout for timeout, ready in polls if ready]


def test_busy_poll_finds_the_expected_read_while_spinning_then_sleeps_when_nothing_comes():
    polls, got = _two_writes(busy_poll=0.3)
    assert got == [b"one", b"two"]
    found = _found_by(polls)
    # "one" woke a blocking poll; "two", 20 ms later, was found by the spin that followed.
    assert found[0] != 0 and found[1] == 0
    # The spin after "two" found nothing within its 300 ms, and the loop blocked again for
    # the 200 ms left before the stop call, instead of spinning on.
    after = polls[[i for i, (_, ready) in enumerate(polls) if ready][1] + 1:]
    assert any(timeout > 0.05 for timeout, _ in after), after[-3:]


def test_no_spin_without_busy_poll_or_without_an_expected_answer():
    for options in ({"busy_poll": 0.0}, {"busy_poll": 0.1, "expect": False}):
        polls, got = _two_writes(**options)
        assert got == [b"one", b"two"]
        assert 0 not in _found_by(polls), options


def test_no_spin_while_a_write_waits_for_a_full_socket():
    polls, got = _two_writes(busy_poll=0.1, stuck_write=True)
    assert got == [b"one", b"two"]
    assert 0 not in _found_by(polls)


def test_a_spin_never_delays_a_timed_call_that_falls_due():
    reactor = DirectEPollReactor(busy_poll=1.0)
    read_fd, write_fd = os.pipe()
    reactor.addReader(_PipeReader(read_fd, [], reactor.expect_soon))
    fired: list[float] = []
    start = time.monotonic()

    def due() -> None:
        fired.append(time.monotonic() - start)
        reactor.stop()

    reactor.callLater(0.01, os.write, write_fd, b"starts a one-second spin")
    reactor.callLater(0.05, due)
    try:
        reactor.run(installSignalHandlers=False)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert fired and fired[0] < 0.5


def test_the_first_request_of_a_connection_is_not_back_to_back():
    pace = BackToBack(0.0002)
    assert pace.request(1000.0) is False
    assert pace.answered(1000.001) is False


# Gaps a hair from the window's edge would test float rounding, not the rule.
_GAPS = st.floats(0, 0.01).filter(lambda gap: abs(gap - 0.0002) > 1e-9)


@given(st.lists(st.tuples(_GAPS, st.floats(0, 0.01)), min_size=1, max_size=20))
def test_a_request_is_back_to_back_when_it_follows_the_previous_answer_within_the_window(steps):
    window = 0.0002
    pace = BackToBack(window)
    now = 5.0
    pace.request(now)
    for gap, service in steps:
        now += service
        previous_quick = pace.quick
        # The next request is expected soon exactly when the one just answered came quickly.
        assert pace.answered(now) is previous_quick
        now += gap
        assert pace.request(now) is (gap <= window)

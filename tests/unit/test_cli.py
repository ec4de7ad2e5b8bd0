"""Command-line settings that are checked before anything starts."""

from __future__ import annotations

import pytest

from powerstrip.cli import LONGEST_BUSY_POLL, UsageError, busy_poll_seconds


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("200", 0.0002),
                                                (str(LONGEST_BUSY_POLL), LONGEST_BUSY_POLL / 1e6)])
def test_busy_poll_is_whole_microseconds(value, seconds):
    assert busy_poll_seconds(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["-1", "fast", "1.5", "", " 200", "2_00", "+5", "\u0661\u0660",
              str(LONGEST_BUSY_POLL + 1)],
)
def test_a_busy_poll_that_is_not_whole_microseconds_in_range_is_refused(value):
    with pytest.raises(UsageError, match=r"--busy-poll: .* is not a number of microseconds"):
        busy_poll_seconds(value)

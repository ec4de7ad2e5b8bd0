"""The audit log: one JSON object per line per request, written as the request ends.

SIGHUP reopens the file, so logrotate can move it away. A write that fails (a full disk, a
file that became unwritable) never stops the proxy: it is logged, once until writes succeed
again, and counted in ``powerstrip_audit_errors_total``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

from powerstrip.observe.stats import Stats

log = logging.getLogger(__name__)


class AuditLog:
    """Appends audit lines to ``path`` (``-``: standard output)."""

    def __init__(self, path: str, stats: Stats) -> None:
        """Opens the file at once, so that a path that cannot be written is a usage error at
        start rather than a surprise later (OSError)."""
        self.path = path
        self.stats = stats
        self._file: IO[str] | None = None
        self._failing = False
        self._open()

    def _open(self) -> None:
        if self.path == "-":
            self._file = sys.stdout
            return
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open

    def write(self, line: dict[str, Any]) -> None:
        """Write one line; a failure is logged and counted, never raised."""
        text = json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n"
        try:
            if self._file is None:
                self._open()
            assert self._file is not None
            self._file.write(text)
            self._file.flush()
        except (OSError, ValueError) as exc:
            self.stats.audit_errors += 1
            if not self._failing:
                self._failing = True
                log.error("audit log %s: cannot write (%s); requests go on, unrecorded, "
                          "until writes succeed again", self.path, exc)
            return
        if self._failing:
            self._failing = False
            log.warning("audit log %s: writing again", self.path)

    def reopen(self) -> None:
        """Close and open the file again (after logrotate moved it)."""
        if self.path == "-":
            return
        self.close()
        try:
            self._open()
        except OSError as exc:
            self._file = None
            self.stats.audit_errors += 1
            log.error("audit log %s: cannot reopen (%s)", self.path, exc)

    def close(self) -> None:
        """Close the file."""
        if self._file is not None and self._file is not sys.stdout:
            try:
                self._file.close()
            except OSError:
                pass
        self._file = None

"""What a client may hold of the proxy: how long a head may take, how long a connection may
sit idle, how many connections may be open. Plain settings, read by the command line before the
reactor is chosen and applied by the connection driver."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Seconds for a request head to arrive whole once begun, seconds a connection may sit
    between requests, and client connections open at once (0: no limit for each)."""

    head_timeout: float = 30.0
    idle_timeout: float = 300.0
    max_connections: int = 1024

"""Which hooks a request gets: pure decisions.

A ``Plan`` is fixed when a request's head arrives, from the configuration in force at that
moment, so a request finishes with the configuration it began with even if the file is reloaded
while it is in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from powerstrip.hooks.config import AdapterSpec, Config


@dataclass(frozen=True, slots=True)
class Hook:
    """One adapter to call, and the endpoint key that brought it in (for messages and logs)."""

    adapter: AdapterSpec
    endpoint: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The hooks one request gets."""

    pre: tuple[Hook, ...]
    post: tuple[Hook, ...]
    config: Config

    @property
    def endpoint(self) -> str:
        """The first matched endpoint key that brought in a hook: the ``endpoint`` label of
        the metrics (one key, from the file, so the label's values are bounded)."""
        return (self.pre or self.post)[0].endpoint

    @property
    def endpoints(self) -> str:
        """The matched endpoint keys, for messages."""
        keys = dict.fromkeys(h.endpoint for h in (*self.pre, *self.post))
        return ", ".join(f'"{key}"' for key in keys)


def make_plan(config: Config, endpoints: list) -> Plan | None:
    """The plan for a request that matched ``endpoints`` (in file order); None if no hooks."""
    pre: list[Hook] = []
    post: list[Hook] = []
    for endpoint in endpoints:
        pre.extend(Hook(config.adapters[name], endpoint.key) for name in endpoint.pre)
        post.extend(Hook(config.adapters[name], endpoint.key) for name in endpoint.post)
    if not pre and not post:
        return None
    return Plan(tuple(pre), tuple(post), config)

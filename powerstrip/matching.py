"""Endpoint matching (interim: plain fnmatch on the path, versionless)."""

from __future__ import annotations

import fnmatch
import re
from urllib.parse import unquote


class SpellingError(ValueError):
    """A request target the proxy refuses."""


class Matcher:
    """Matches requests against endpoint patterns in file order."""

    def __init__(self, endpoints: list) -> None:
        self.endpoints = [(e, re.compile(fnmatch.translate(e.pattern))) for e in endpoints]

    def match(self, method: str, target: str) -> list:
        path = unquote(target.split("?", 1)[0])
        versionless = re.sub(r"^/v[0-9.]+(?=/)", "", path)
        found = []
        for endpoint, regex in self.endpoints:
            if endpoint.method not in ("*", method):
                continue
            if regex.match(path) or regex.match("/v1.41" + versionless):
                found.append(endpoint)
        return found

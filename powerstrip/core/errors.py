"""Docker-style error responses: the JSON ``{"message": ...}`` that the docker CLI prints."""

from __future__ import annotations

import json
from http import HTTPStatus


def error_body(message: str) -> bytes:
    """The JSON body dockerd uses for errors."""
    return json.dumps({"message": message}).encode() + b"\n"


def error_response(status: int, message: str, *, close: bool = True) -> bytes:
    """A complete HTTP/1.1 error response carrying a Docker-style JSON message.

    ``close`` adds ``Connection: close``: after an error the proxy often cannot know where the
    client's next request starts (a body it did not read, a head it could not parse).
    """
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = error_body(message)
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body

"""Header fields and media types, read the way the proxy needs them: as the bytes that arrived.

One reading of a Content-Type serves every decision the proxy makes on it: whether a request
body is JSON that pre-hooks may see, whether a response is JSON or text that post-hooks may see,
whether a form body would reach the daemon unseen, and whether a response is a legacy raw
stream that takes the connection over.
"""

from __future__ import annotations

#: The media types dockerd answers with when it takes a connection over without a 101 (attach
#: and exec start for clients that sent no Upgrade header).
HIJACK_CONTENT_TYPES = (
    b"application/vnd.docker.raw-stream",
    b"application/vnd.docker.multiplexed-stream",
)


def last_header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The last value of header ``name`` (case-insensitive) among ``headers``, or None. (Go's
    ``Header.Get`` reads the first; requests that repeat a header where that matters are refused
    before hooks see them, see ``plans.hidden_from_hooks``.)"""
    name = name.lower()
    found = None
    for key, value in headers:
        if key.lower() == name:
            found = value
    return found


def media_type(content_type: bytes | str | None) -> bytes | None:
    """A Content-Type's media type without parameters, trimmed and lower-cased as Go's ``mime``
    reads a valid one: ``b"Application/JSON; charset=utf-8"`` gives ``b"application/json"``.
    None for no header.

    A header value arrives as bytes and a media type is ASCII, so trimming and case are ASCII's;
    text is read as its UTF-8 bytes.
    """
    if content_type is None:
        return None
    if isinstance(content_type, str):
        content_type = content_type.encode()
    return content_type.split(b";", 1)[0].strip().lower()


def _names_json(media: bytes) -> bool:
    return media == b"application/json" or media.endswith(b"+json")


def is_json(content_type: bytes | str | None) -> bool:
    """Whether a Content-Type names JSON, whatever its parameters (``; charset=utf-8``)."""
    media = media_type(content_type)
    return media is not None and _names_json(media)


def is_text(content_type: bytes | str | None) -> bool:
    """Whether post-hooks can be shown a body of this type: JSON or text."""
    media = media_type(content_type)
    return media is not None and (media.startswith(b"text/") or _names_json(media))


#: The methods whose form-encoded bodies Go's ``ParseForm`` reads as parameters.
_FORM_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))


def hidden_from_hooks(
    method: bytes, headers: list[tuple[bytes, bytes]], has_body: bool
) -> str | None:
    """Why a request must not reach pre-hooks, or None: what the daemon would read from it and
    adapters could not see.

    - A second Content-Type: the daemon reads the first, a naive reader the last, so a body
      could be shown to adapters as one thing and read by the daemon as another.
    - A form-encoded body (POST, PUT, PATCH): Go's ``ParseForm`` reads its values as parameters
      over the query string's (a tag's repo, a build's networkmode), while adapters see no body.
    """
    content_types = [value for name, value in headers if name.lower() == b"content-type"]
    if len(content_types) > 1:
        return "more than one Content-Type header"
    if (has_body and method in _FORM_METHODS and content_types
            and media_type(content_types[0]) == b"application/x-www-form-urlencoded"):
        return ("a form-encoded body (application/x-www-form-urlencoded); send parameters in "
                "the query")
    return None

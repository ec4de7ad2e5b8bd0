"""The protocol core, without I/O: HTTP framing, the exchange state machine, media types and
header helpers, the path dockerd routes a request target to, and the Docker-style errors the
proxy answers with. Nothing here touches a socket or a reactor, so all of it is tested with
plain calls."""

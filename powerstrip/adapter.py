"""Writing adapters: the SDK's public surface (implemented in ``powerstrip.kit.sdk``).

``python -m powerstrip.adapter TARGET ...`` is the ``powerstrip-adapter`` command.
"""

from powerstrip.kit.sdk import (
    Adapter,
    Certificate,
    Client,
    Headers,
    Refuse,
    Request,
    Response,
    load,
    main,
)

__all__ = ["Adapter", "Certificate", "Client", "Headers", "Refuse", "Request", "Response", "load",
           "main"]

if __name__ == "__main__":
    main()

"""A null adapter written with Powerstrip's SDK, for the benchmark's burst workload: a pre-hook
and a post-hook on every endpoint, each passing what it is given on unchanged.

Usage: python bench/sdk_null.py (--listen HOST:PORT | --unix PATH)
"""

from __future__ import annotations

from powerstrip.kit.sdk import Adapter

app = Adapter("sdk-null")


@app.pre("* *")
def unchanged(request: object) -> None:
    """Forward the request as it came."""
    return None


@app.post("* *")
def unchanged_response(request: object, response: object) -> None:
    """Pass the response on as it came."""
    return None


if __name__ == "__main__":
    app.run()

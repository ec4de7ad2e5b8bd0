#!/usr/bin/env python3
"""The debug adapter: shows every hook call readably and passes everything through unchanged.

For each pre-hook it prints the method, the request target and the JSON body pretty-printed; for
each post-hook the request, then the daemon's status, content type and body. Chained twice around
another adapter, ``[debug, X, debug]``, its second call for a request prints a unified diff
against its first, which is exactly what X changed. (Calls for one client request are paired by
the ``Powerstrip-Call`` header the proxy sends.)

Run it and name it in the adapters file::

    python adapters/debug.py --listen 127.0.0.1:9001 [--output FILE]

    endpoints:
      "POST /*/containers/create":
        pre: [debug, volumes, debug]
    adapters:
      debug: http://127.0.0.1:9001/
"""

from __future__ import annotations

import difflib
import json
import sys
from collections import OrderedDict
from typing import IO

from powerstrip.adapter import Adapter, Request, Response

app = Adapter("debug")

#: Bodies longer than this are cut in the output (the call itself is never changed).
MAX_SHOWN = 64 * 1024
#: How many client requests are remembered for diffs; the oldest are forgotten first.
REMEMBERED = 1000


class Show:
    """Renders hook calls and remembers each request's last rendering, to diff the next."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.seen: OrderedDict[tuple[str, str], tuple[int, list[str]]] = OrderedDict()

    def call(self, kind: str, call_id: str | None, lines: list[str]) -> None:
        """Print one call, with the diff against the previous call for the same request."""
        count, diff = 1, None
        if call_id is not None:
            before = self.seen.pop((kind, call_id), None)
            if before is not None:
                count = before[0] + 1
                diff = list(difflib.unified_diff(
                    before[1], lines, f"call {before[0]}", f"call {count}", lineterm="", n=2,
                ))
            self.seen[(kind, call_id)] = (count, lines)
            while len(self.seen) > REMEMBERED:
                self.seen.popitem(last=False)
        where = f"request {call_id}" if call_id else "request (unpaired)"
        rule = f"── {kind} · {where} · call {count} "
        text = [rule + "─" * max(0, 72 - len(rule)), *lines]
        if diff is not None:
            text.append(f"   changed since call {count - 1}:" if diff
                        else f"   unchanged since call {count - 1}")
            text.extend("   " + line for line in diff)
        self.out.write("\n".join(text) + "\n")
        self.out.flush()


def pretty(body: str | None) -> list[str]:
    """A body as indented lines: JSON pretty-printed with sorted keys, other text as is."""
    if body is None:
        return ["   (no body shown)"]
    if body == "":
        return ["   (empty body)"]
    try:
        text = json.dumps(json.loads(body), indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        text = body
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + f"\n… ({len(text) - MAX_SHOWN} more characters)"
    return ["   " + line for line in text.splitlines()]


def request_lines(request: Request) -> list[str]:
    """The request as shown: its line, then its body."""
    return [f"{request.method} {request.target}", *pretty(request.body)]


def response_lines(request: Request, response: Response) -> list[str]:
    """A post-hook call as shown: the request line, the daemon's status, then the body."""
    kind = response.content_type or "no content type"
    return [f"{request.method} {request.target}", f"→ {response.code} ({kind})",
            *pretty(response.body)]


show = Show(sys.stdout)


@app.pre("* *")
def show_request(request: Request) -> None:
    """Print the request; change nothing."""
    show.call("pre-hook", request.call, request_lines(request))


@app.post("* *")
def show_response(request: Request, response: Response) -> None:
    """Print the request and the daemon's response; change nothing."""
    show.call("post-hook", request.call, response_lines(request, response))


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve."""
    global show
    parser = app.argument_parser()
    parser.add_argument("--output", metavar="FILE",
                        help="append the calls to FILE instead of standard output")
    args = parser.parse_args(argv)
    if args.output:
        show = Show(open(args.output, "a", encoding="utf-8"))  # noqa: SIM115 - open until exit
    app.serve(args)


if __name__ == "__main__":
    main()

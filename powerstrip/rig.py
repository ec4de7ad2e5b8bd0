"""The run command: Powerstrip in front of a Docker Engine, ready to use.

It uses the daemon at ``--upstream`` when that answers, and otherwise starts a throwaway engine
(``powerstrip.engine``) for as long as the proxy runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from powerstrip import cli, engine

ROOT = Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    """Start the engine if needed, then serve until interrupted."""
    parser = argparse.ArgumentParser(prog="powerstrip-run", description=__doc__)
    parser.add_argument("--listen", default=os.environ.get("POWERSTRIP_LISTEN", cli.DEFAULT_LISTEN))
    parser.add_argument(
        "--upstream", default=os.environ.get("POWERSTRIP_UPSTREAM", cli.DEFAULT_UPSTREAM)
    )
    parser.add_argument("--config", default=os.environ.get("POWERSTRIP_CONFIG"))
    parser.add_argument("--engine-root", default=str(ROOT / ".run" / "engine"))
    args = parser.parse_args(argv)

    throwaway = None
    upstream = args.upstream
    if engine.daemon_reachable(upstream):
        print(f"powerstrip: using the Docker daemon at {upstream}", file=sys.stderr)
    else:
        print(f"powerstrip: no Docker daemon at {upstream}; starting a throwaway engine",
              file=sys.stderr)
        engine.ensure_packages()
        throwaway = engine.Engine(args.engine_root)
        throwaway.start()
        throwaway.ensure_image()
        upstream = throwaway.host
    print(
        "powerstrip: try, in another shell, after the export line below:\n"
        "  docker version\n"
        "  docker run --rm busybox echo hello through powerstrip\n"
        "  echo hi | docker run -i --rm busybox cat",
        file=sys.stderr,
    )
    serve_args = ["serve", "--listen", args.listen, "--upstream", upstream]
    config = args.config or str(ROOT / "powerstrip.yml")
    if Path(config).exists():
        serve_args += ["--config", config]
    try:
        return cli.main(serve_args)
    finally:
        if throwaway is not None:
            throwaway.stop()


if __name__ == "__main__":
    sys.exit(main())

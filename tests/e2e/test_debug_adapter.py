"""The debug adapter through the real proxy and engine: it shows requests and the daemon's
responses readably, and changes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from powerstrip.testing import AdapterProcess, ProxyProcess
from tests.e2e.conftest import REPO, docker, ok

DEBUG = REPO / "adapters" / "debug.py"


@pytest.mark.timeout(90)
def test_debug_shows_requests_and_responses_and_changes_nothing(
    docker_engine, powerstrip_proxy, adapter_process, scratch, tmp_path: Path
) -> None:
    shown = tmp_path / "debug.out"
    debug: AdapterProcess = adapter_process(
        [sys.executable, str(DEBUG), "--listen", "127.0.0.1:0", "--output", str(shown)], "debug")
    proxy: ProxyProcess = powerstrip_proxy(
        "version: 1\n"
        "endpoints:\n"
        '  "POST /*/containers/create":\n'
        "    pre: [debug]\n"
        "    post: [debug]\n"
        '  "GET /*/containers/*/json":\n'
        "    post: [debug]\n"
        "adapters:\n"
        f"  debug: {debug.url}\n"
    )
    name = scratch.name("debug")
    ok(docker(proxy.host, "create", "--name", name, "-e", "SHOWN=yes", "busybox", "true"))
    through = json.loads(ok(docker(proxy.host, "inspect", name)))
    direct = json.loads(ok(docker(docker_engine.host, "inspect", name)))
    assert through == direct  # the post-hook passed the response on unchanged

    text = shown.read_text()
    calls = text.split("── ")[1:]
    create_pre = next(c for c in calls if c.startswith("pre-hook"))
    assert f"POST /v1.41/containers/create?name={name}" in create_pre
    assert '"SHOWN=yes"' in create_pre  # the body, pretty-printed
    create_post = next(c for c in calls if c.startswith("post-hook") and "create" in c)
    assert "→ 201 (application/json)" in create_post
    assert '"Id": "' + direct[0]["Id"] + '"' in create_post
    inspect_post = next(c for c in calls if c.startswith("post-hook") and "\nGET " in c)
    assert f"GET /v1.41/containers/{name}/json" in inspect_post
    assert "→ 200 (application/json)" in inspect_post
    assert f'"Name": "/{name}"' in inspect_post
    # Pre and post calls of one request share its identifier (the Powerstrip-Call header).
    request_of = {c.split("·")[1].strip() for c in (create_pre, create_post)}
    assert len(request_of) == 1 and "unpaired" not in request_of.pop()
    assert "Traceback" not in debug.log()

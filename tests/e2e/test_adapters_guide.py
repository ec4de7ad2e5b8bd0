"""docs/adapters.md, run as written: its SDK snippet as a real adapter process, wrapped in the debug
adapter, through the real proxy to the real engine; and its in-process testing example."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

from powerstrip.testing import AdapterProcess, ProxyProcess, call_pre
from tests.e2e.conftest import REPO, docker, ok, unique

GUIDE = REPO / "docs" / "adapters.md"
DEBUG = REPO / "adapters" / "debug.py"


def snippet(name: str) -> str:
    """The code block that follows ``<!-- snippet: NAME -->`` in the guide."""
    match = re.search(
        rf"<!-- snippet: {re.escape(name)} -->\s*```python\n(.*?)```", GUIDE.read_text(), re.S
    )
    assert match, f"docs/adapters.md has no snippet {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def snippet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("guide") / "owner_label.py"
    path.write_text(snippet("owner_label.py"))
    return path


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_snippet_is_under_20_lines() -> None:
    assert len(snippet("owner_label.py").splitlines()) < 20


def test_the_snippet_in_process(snippet_file: Path) -> None:
    app = load(snippet_file).app
    added = call_pre(app, "POST", "/v1.41/containers/create", {"Image": "busybox"})
    assert added.request.json["Labels"] == {"owner": "ops"}
    kept = call_pre(app, "POST", "/containers/create",
                    {"Image": "busybox", "Labels": {"tier": "db", "owner": "ops"}})
    assert kept.request.json["Labels"] == {"tier": "db", "owner": "ops"}
    refused = call_pre(app, "POST", "/containers/create",
                       {"Image": "busybox", "Labels": {"owner": "mallory"}})
    assert refused.status == 403 and "'mallory'" in refused.message
    # Other endpoints are not this adapter's business: passed on unchanged.
    other = call_pre(app, "POST", "/v1.41/containers/abc/start", None)
    assert other.request.target == "/v1.41/containers/abc/start"


@pytest.mark.timeout(90)
def test_the_snippet_through_powerstrip_with_debug_around_it(
    snippet_file: Path, docker_engine, powerstrip_proxy, adapter_process, tmp_path: Path
) -> None:
    owner: AdapterProcess = adapter_process(
        [sys.executable, str(snippet_file), "--listen", "127.0.0.1:0"], "owner-label")
    shown = tmp_path / "debug.out"
    debug: AdapterProcess = adapter_process(
        [sys.executable, str(DEBUG), "--listen", "127.0.0.1:0", "--output", str(shown)], "debug")
    proxy: ProxyProcess = powerstrip_proxy(
        "version: 1\n"
        "endpoints:\n"
        '  "POST /*/containers/create":\n'
        "    pre: [debug, owner_label, debug]\n"
        "adapters:\n"
        f"  debug: {debug.url}\n"
        f"  owner_label: {owner.url}\n"
    )
    name = unique("guide")
    try:
        ok(docker(proxy.host, "create", "--name", name, "busybox", "true"))
        label = ok(docker(docker_engine.host, "inspect", "-f", "{{.Config.Labels.owner}}", name))
        assert label.strip() == b"ops"

        refused = docker(proxy.host, "create", "--label", "owner=mallory", "busybox", "true")
        assert refused.returncode != 0
        assert b"owner-label: owner 'mallory' is not allowed here" in refused.stderr
    finally:
        docker(docker_engine.host, "rm", "-f", name)

    text = shown.read_text()
    calls = text.split("── pre-hook")
    # The first request seen twice (before the owner-label adapter and after it); the refused
    # one only before, since a refusal ends the chain.
    assert len(calls) == 1 + 3, text
    first, second = calls[1], calls[2]
    assert "call 1" in first and f"--name={name}" not in first  # the name is in the query
    assert f"POST /v1.41/containers/create?name={name}" in first
    assert '"Image": "busybox"' in first
    assert "changed since call 1:" in second
    diff = second.split("changed since call 1:")[1]
    assert re.search(r'^\s+\+\s+"owner": "ops"', diff, re.M), diff
    # Paired by request: the refused request is a new one, not a third call of the first.
    assert "call 1" in calls[3] and calls[3].split("·")[1] != calls[1].split("·")[1]


@pytest.mark.timeout(60)
def test_the_snippet_served_by_powerstrip_adapter(snippet_file: Path, adapter_process) -> None:
    """``python -m powerstrip.adapter FILE`` (the ``powerstrip-adapter`` command) serves a module
    that has no ``__main__`` block of its own; anything but a POST gets a JSON error."""
    served: AdapterProcess = adapter_process(
        [sys.executable, "-m", "powerstrip.adapter", f"{snippet_file}:app",
         "--listen", "127.0.0.1:0"], "powerstrip-adapter")
    call = json.dumps({"PowerstripProtocolVersion": 1, "Type": "pre-hook", "ClientRequest": {
        "Method": "POST", "Request": "/v1.41/containers/create",
        "Body": json.dumps({"Image": "busybox"})}}).encode()
    with urllib.request.urlopen(urllib.request.Request(served.url, data=call), timeout=10) as got:
        answer = json.loads(got.read())
    assert json.loads(answer["ModifiedClientRequest"]["Body"])["Labels"] == {"owner": "ops"}
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(served.url, timeout=10)
    assert refused.value.code == 405
    assert "hook calls are POSTs" in json.loads(refused.value.read())["message"]

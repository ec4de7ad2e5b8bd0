"""Hooks see a JSON body as the daemon decodes it: an adapter written naively from the guide
(``request.json["HostConfig"]["Privileged"]``) is not fooled by any spelling the daemon accepts.

Each body is first sent straight to the real engine, to learn what the daemon makes of it; then
through Powerstrip with the naive adapter as a pre-hook. A body the daemon reads as privileged must
be refused; one it reads as unprivileged must be created, unprivileged (or refused with a 400
saying it cannot be shown unambiguously)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from powerstrip.testing import AdapterProcess, ProxyProcess
from tests import rawhttp
from tests.e2e.conftest import unique

NAIVE = '''
from powerstrip.adapter import Adapter, Refuse

app = Adapter("no-privileged")


@app.pre("POST /*/containers/create")
def no_privileged(request):
    config = request.json
    if config is None:
        raise Refuse(400, "no-privileged: the container config is not JSON")
    if (config.get("HostConfig") or {}).get("Privileged"):
        raise Refuse(403, "no-privileged: privileged containers are not allowed")


if __name__ == "__main__":
    app.run()
'''

BODIES = {
    "plain": '{"Image":"busybox","HostConfig":{"Privileged":true}}',
    "lower-case object": '{"Image":"busybox","hostconfig":{"Privileged":true}}',
    "upper-case field": '{"Image":"busybox","HostConfig":{"PRIVILEGED":true}}',
    "long s": '{"Image":"busybox","Ho\u017ftConfig":{"Privileged":true}}',
    "case-variant duplicate": '{"Image":"busybox","HostConfig":{"Privileged":false,'
                              '"privileged":true}}',
    "repeated object merges": '{"Image":"busybox","HostConfig":{"Privileged":true},'
                              '"HostConfig":{}}',
    "repeated object, later false": '{"Image":"busybox","HostConfig":{"Privileged":true},'
                                    '"HostConfig":{"Privileged":false}}',
    "case-variant first": '{"Image":"busybox","HostConfig":{"privileged":true,'
                          '"Privileged":false}}',
    "trailing data": '{"Image":"busybox","HostConfig":{"Privileged":true}} {"x": 1}',
    "escaped key": '{"Image":"busybox","HostConfig":{"Privil\\u0065ged":true}}',
    "top level, no HostConfig": '{"Image":"busybox","Privileged":true}',
    "top level beside HostConfig": '{"Image":"busybox","Privileged":true,"HostConfig":{}}',
    "value then null": '{"Image":"busybox","HostConfig":{"Privileged":true,"Privileged":null}}',
}


def create(host: str, body: str) -> rawhttp.Response:
    return rawhttp.call(host, "POST", f"/v1.41/containers/create?name={unique('json')}",
                        body.encode(), {"Content-Type": "application/json"})


def privileged(host: str, container: str) -> bool:
    got = rawhttp.call(host, "GET", f"/v1.41/containers/{container}/json")
    assert got.status == 200, got
    return bool(got.json()["HostConfig"]["Privileged"])


def remove(host: str, container: str) -> None:
    rawhttp.call(host, "DELETE", f"/v1.41/containers/{container}?force=1")


@pytest.fixture(scope="module")
def naive_proxy(docker_engine, tmp_path_factory: pytest.TempPathFactory):
    from powerstrip.testing import launch_proxy, start_adapter, stop_process, stop_proxy

    directory: Path = tmp_path_factory.mktemp("naive")
    source = directory / "no_privileged.py"
    source.write_text(NAIVE)
    adapter: AdapterProcess = start_adapter(
        [sys.executable, str(source), "--listen", "127.0.0.1:0"], "no-privileged")
    config = directory / "adapters.yml"
    config.write_text('version: 1\nendpoints:\n  "POST /*/containers/create": {pre: [naive]}\n'
                      f"adapters:\n  naive: {adapter.url}\n")
    proxy: ProxyProcess = launch_proxy(docker_engine.host, config)
    try:
        yield proxy
    finally:
        stop_proxy(proxy)
        stop_process(adapter.proc)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(BODIES))
def test_a_naive_adapter_sees_what_the_daemon_decodes(
    name: str, docker_engine, naive_proxy: ProxyProcess
) -> None:
    body = BODIES[name]
    direct = create(docker_engine.host, body)
    assert direct.status == 201, (name, direct)
    container = direct.json()["Id"]
    try:
        daemon_privileged = privileged(docker_engine.host, container)
    finally:
        remove(docker_engine.host, container)

    through = create(naive_proxy.host, body)
    if daemon_privileged:
        assert through.status in (400, 403), (name, through, naive_proxy.stderr()[-2000:])
        return
    if through.status == 400:
        assert "cannot be shown" in through.message(), through
        return
    assert through.status == 201, (name, through)
    container = through.json()["Id"]
    try:
        assert not privileged(docker_engine.host, container), name
    finally:
        remove(docker_engine.host, container)


@pytest.mark.timeout(60)
def test_what_the_daemon_gets_is_what_the_hook_saw(docker_engine, naive_proxy) -> None:
    """A respelled body is forwarded respelled: labels (map keys, not fields) keep their case,
    and a StrSlice given as one string arrives as the list the daemon makes of it."""
    body = ('{"image":"busybox","cmd":"true","Labels":{"Tier":"a","tier":"b"},'
            '"hostconfig":{"Privileged":false}}')
    through = create(naive_proxy.host, body)
    assert through.status == 201, through
    container = through.json()["Id"]
    try:
        got = rawhttp.call(docker_engine.host, "GET", f"/v1.41/containers/{container}/json")
        config = got.json()["Config"]
        assert config["Labels"] == {"Tier": "a", "tier": "b"}
        assert config["Cmd"] == ["true"]
        assert config["Image"] == "busybox"
    finally:
        remove(docker_engine.host, container)


@pytest.mark.timeout(60)
def test_an_ambiguous_body_is_refused_with_a_400_naming_why(naive_proxy) -> None:
    body = ('{"Image":"busybox","HostConfig":{"Mounts":[{"Type":"bind","Source":"/srv"}],'
            '"Mounts":[{"Source":"/"}]}}')
    got = create(naive_proxy.host, body)
    assert got.status == 400, got
    assert "body.HostConfig.Mounts" in got.message() and "cannot be shown" in got.message()
    assert json.loads(got.body)["message"] == got.message()

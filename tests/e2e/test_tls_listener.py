"""The docker CLI through a TLS listener (``--listen ssl:...``), as through a daemon's own
``--tlsverify`` port: it verifies the proxy's certificate against ``DOCKER_CERT_PATH/ca.pem``,
and ends its side of a hijacked stream with a close_notify (at once when there is no stdin,
after it when stdin is piped), which must end only that side, not the output after it.

Piped stdin over TLS once hung on a busy machine: the close_notify came in the same read as the
last of the stdin while the proxy held the client back, and never reached the daemon. It runs
here many times, two at once, each with a bounded time, so that a hang fails instead of
stalling the suite (tests/faults/test_tls_halfclose.py forces the same case on purpose).

TLS towards the daemon (an ``ssl:`` upstream) is tried with a second proxy in front of the
first one's TLS listener.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import docker, ok, serving
from tests.tlscerts import make_certs, ssl_listen

pytestmark = pytest.mark.timeout(120)

#: ``seq 100000``: 588,895 bytes of stdin, several hundred TLS records.
LINES = b"".join(b"%d\n" % i for i in range(1, 100_001))
#: Seconds one piped run may take before it counts as hung (one takes about a second).
PIPED_TIMEOUT = 45


@pytest.fixture
def tls_proxy(engine, tmp_path) -> Iterator[dict[str, str]]:
    """A proxy with a TLS listener; the environment the printed line gives a docker client."""
    certs = make_certs(tmp_path)
    with serving(engine.host, ssl_listen(certs)) as (_, assignments):
        assert assignments.startswith("DOCKER_HOST=tcp://127.0.0.1:"), assignments
        env = dict(word.split("=", 1) for word in assignments.split())
        assert env.pop("DOCKER_TLS_VERIFY") == "1", assignments
        env["DOCKER_CERT_PATH"] = str(certs)
        yield env


def tls(env: dict[str, str], *args: str, **kwargs) -> subprocess.CompletedProcess[bytes]:
    """The docker CLI over TLS, verifying the proxy's certificate."""
    return docker(env["DOCKER_HOST"], *args,
                  env_extra={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": env["DOCKER_CERT_PATH"]},
                  **kwargs)


def test_docker_cli_through_a_tls_listener(tls_proxy, engine):
    assert ok(tls(tls_proxy, "version", "--format", "{{.Server.Version}}")) == \
        ok(docker(engine.host, "version", "--format", "{{.Server.Version}}"))
    # No stdin: the CLI closes its writing side at once, and the output still arrives.
    result = tls(tls_proxy, "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


@pytest.mark.timeout(400)
def test_piped_stdin_over_tls_ends_and_the_output_follows(tls_proxy, scratch):
    """``seq 100000 | docker run -i busybox wc -l``, 10 times, two at a time: stdin ends with
    the CLI's close_notify, the container sees its end, and wc's count comes back."""
    def piped(_: int) -> subprocess.CompletedProcess[bytes]:
        return tls(tls_proxy, "run", "--rm", "-i", "--name", scratch.name("tls-wc"),
                   "busybox", "wc", "-l", input=LINES, timeout=PIPED_TIMEOUT)

    with ThreadPoolExecutor(2) as pool:
        counts = [ok(result).strip() for result in pool.map(piped, range(10))]
    assert counts == [b"100000"] * 10


def test_exec_with_piped_stdin_over_tls(tls_proxy, engine, scratch):
    name = scratch.name("tls")
    ok(docker(engine.host, "run", "-d", "--name", name, "busybox", "sleep", "300"))
    for _ in range(3):
        assert ok(tls(tls_proxy, "exec", "-i", name, "cat", input=b"through tls\n",
                      timeout=PIPED_TIMEOUT)) == b"through tls\n"


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_proxy, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    make_certs(other)  # another authority's ca.pem
    result = docker(tls_proxy["DOCKER_HOST"], "version",
                    env_extra={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(other)})
    assert result.returncode != 0
    assert b"certificate" in result.stderr, result.stderr


def test_an_ssl_upstream_carries_piped_stdin_and_the_output_after_it(tls_proxy, scratch, tmp_path):
    """A second proxy whose upstream is the first one's TLS listener (``ssl:``, verifying its
    certificate): the end of stdin crosses that TLS hop as a close_notify, and wc's count
    comes back across it."""
    authorities = tmp_path / "authorities"
    authorities.mkdir()
    shutil.copy(f"{tls_proxy['DOCKER_CERT_PATH']}/ca.pem", authorities)
    port = tls_proxy["DOCKER_HOST"].rsplit(":", 1)[1]
    upstream = f"ssl:host=127.0.0.1:port={port}:caCertsDir={authorities}:hostname=localhost"
    with serving(upstream) as (_, assignments):
        host = assignments.split("=", 1)[1]
        for _ in range(3):
            assert ok(docker(host, "run", "--rm", "-i", "--name", scratch.name("ssl-up"),
                             "busybox", "wc", "-l", input=LINES,
                             timeout=PIPED_TIMEOUT)).strip() == b"100000"

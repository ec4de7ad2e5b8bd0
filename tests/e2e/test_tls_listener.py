"""The docker CLI through a TLS listener (``--listen ssl:...``), as through a daemon's own
``--tlsverify`` port: it verifies the proxy's certificate against ``DOCKER_CERT_PATH/ca.pem``,
and ends its side of a hijacked stream at once when there is no stdin, which must end only
that side, not the output after it.

Piped stdin over TLS (``docker run -i``) is left out here: it passes when run on its own but
has been seen to hang under heavy load, for a reason not yet found (see the README's limits).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import docker, ok, serving
from tests.tlscerts import make_certs, ssl_listen

pytestmark = pytest.mark.timeout(120)


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


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_proxy, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    make_certs(other)  # another authority's ca.pem
    result = docker(tls_proxy["DOCKER_HOST"], "version",
                    env_extra={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(other)})
    assert result.returncode != 0
    assert b"certificate" in result.stderr, result.stderr

"""Big bodies and long-running streams through the proxy against the real daemon: a build
context and an image archive of 200 MiB each pass in bounded memory, and ``docker stats`` and
build progress reach the client while the daemon is still producing them.

Pull progress is the one stream of the issue's list not exercised here: no registry is reachable
from this machine, so the daemon has nothing to pull.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    LineReader,
    docker,
    end,
    ok,
    popen_docker,
    rss_peak_mib,
)
from tests.rawhttp import Conn, connect

MIB = 2**20
BIG = 200 * MIB
#: The proxy's peak resident memory while 200 MiB pass through it (it starts near 40 MiB).
RSS_LIMIT_MIB = 100
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def random_file(path: Path, size: int) -> str:
    """Write ``size`` incompressible bytes to ``path``; return their MD5."""
    digest = hashlib.md5()
    with path.open("wb") as out:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


@pytest.mark.timeout(300)
def test_classic_build_with_a_200_mib_context_in_bounded_memory(fresh_proxy, scratch, tmp_path):
    """The context goes up as one request body of 200 MiB; the daemon gets every byte (the
    hash is taken inside the image) while the proxy holds only a window of it."""
    proc, host = fresh_proxy
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nCOPY blob /blob\n"
                                        "RUN md5sum /blob > /blob.md5\n")
    expected = random_file(context / "blob", BIG)
    image = scratch.name("bigctx")
    try:
        ok(docker(host, "build", "-q", "-t", image, str(context),
                  env_extra={"DOCKER_BUILDKIT": "0"}, timeout=240))
    finally:
        (context / "blob").unlink()  # 200 MiB that pytest's tmp_path retention would keep
    assert ok(docker(host, "run", "--rm", image, "cat", "/blob.md5")) == \
        f"{expected}  /blob\n".encode()
    peak = rss_peak_mib(proc.pid)
    assert peak < RSS_LIMIT_MIB, f"the proxy's peak RSS was {peak:.1f} MiB"


@pytest.mark.timeout(300)
def test_docker_load_of_a_200_mib_image_in_bounded_memory(engine, fresh_proxy, scratch, tmp_path):
    """``docker load`` of a 200 MiB archive through the proxy: the same image comes out, and
    the proxy's memory does not grow with the archive."""
    proc, host = fresh_proxy
    layer = tmp_path / "layer.tar"
    big = tmp_path / "big.bin"
    random_file(big, BIG)
    with tarfile.open(layer, mode="w") as archive:
        archive.add("/bin/busybox", arcname="bin/busybox")
        archive.add(big, arcname="big.bin")
    big.unlink()
    image = f"{scratch.name('bigload')}:v1"
    ok(docker(engine.host, "import", str(layer), image, timeout=120))
    layer.unlink()
    image_id = ok(docker(engine.host, "image", "inspect", "--format", "{{.Id}}", image)).strip()
    saved = tmp_path / "image.tar"
    ok(docker(engine.host, "save", "-o", str(saved), image, timeout=120))
    assert saved.stat().st_size > BIG
    ok(docker(engine.host, "rmi", image))

    try:
        loaded = ok(docker(host, "load", "-i", str(saved), timeout=180))
    finally:
        saved.unlink()
    assert loaded.strip() == f"Loaded image: {image}".encode()
    assert ok(docker(engine.host, "image", "inspect", "--format", "{{.Id}}", image)).strip() \
        == image_id
    peak = rss_peak_mib(proc.pid)
    assert peak < RSS_LIMIT_MIB, f"the proxy's peak RSS was {peak:.1f} MiB"


@pytest.mark.timeout(60)
def test_stats_stream_samples_arrive_as_the_daemon_takes_them(engine, proxy, scratch):
    """``GET /containers/{id}/stats`` (what ``docker stats`` reads) is one endless response of a
    JSON sample a second: through the proxy each sample arrives on its own, about a second after
    the one before, while the response is still open."""
    name = scratch.name("stats")
    ok(docker(engine.host, "run", "-d", "--name", name, "busybox", "sleep", "300"))
    sock = connect(proxy.host)
    sock.sendall(f"GET /v1.41/containers/{name}/stats?stream=1 HTTP/1.1\r\n"
                 "Host: api.moby.localhost\r\n\r\n".encode())
    reader = Conn(sock=sock)
    head = reader.read(head_only=True)
    assert head.status == 200 and head.header("transfer-encoding") == "chunked"
    decoder = json.JSONDecoder()
    raw, text, samples = reader.buffer, "", []
    while len(samples) < 3:
        chunk = sock.recv(65536)
        assert chunk, "the stats stream ended"
        raw += chunk
        # Undo the chunked framing as far as whole chunks have come...
        while b"\r\n" in raw:
            size_line, rest = raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            assert size, "the stats stream ended"
            if len(rest) < size + 2:
                break
            text += rest[:size].decode()
            raw = rest[size + 2:]
        # ... then take out the samples that are complete.
        while text.strip():
            try:
                sample, stop = decoder.raw_decode(text, len(text) - len(text.lstrip()))
            except json.JSONDecodeError:
                break
            samples.append((time.monotonic(), sample["read"], sample["pids_stats"]))
            text = text[stop:]
    sock.close()
    arrivals = [arrived for arrived, _, _ in samples]
    assert len({read for _, read, _ in samples}) == 3, "the same sample was sent again"
    assert all(pids.get("current") == 1 for _, _, pids in samples)  # sleep, alone
    assert arrivals[2] - arrivals[0] >= 1.5, (
        f"three samples within {arrivals[2] - arrivals[0]:.2f} s: they were held back and "
        "released together")


@pytest.mark.timeout(60)
def test_docker_stats_shows_successive_samples_while_running(engine, proxy, scratch):
    """``docker stats`` without ``--no-stream`` reads one endless response of a sample a second.

    The CLI redraws its table on a timer of its own whatever arrives, so rows alone prove
    nothing; the container therefore starts one more process every second, and two different
    PID counts on screen can only come from two different samples that crossed the proxy while
    the response was still open.
    """
    name = scratch.name("stats")
    ok(docker(engine.host, "run", "-d", "--name", name, "busybox", "sh", "-c",
              "while true; do sleep 600 & sleep 1; done"))
    stats = popen_docker(proxy.host, "stats", "--format", "{{.Name}} {{.PIDs}}", name)
    try:
        reader = LineReader(stats)
        counts: list[int] = []
        rows: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(set(counts)) < 2 and time.monotonic() < deadline:
            line = reader.readline(deadline - time.monotonic())
            assert line is not None, (
                f"docker stats printed no further line within 20 s; rows so far: {rows!r}")
            # Each redraw starts with terminal clear/home sequences; the row follows them.
            row = ANSI.sub(b"", line).strip()
            if not row:
                continue
            rows.append(row)
            match = re.fullmatch(rb"(\S+) (\d+)", row)
            if match and match.group(1) == name.encode():
                counts.append(int(match.group(2)))
        assert len(set(counts)) >= 2, f"no two different samples within 20 s: {rows!r}"
        assert counts == sorted(counts), f"samples out of order: {counts}"
        assert stats.poll() is None, "docker stats ended instead of streaming"
    finally:
        end(stats)


@pytest.mark.timeout(120)
def test_build_progress_reaches_the_client_while_the_build_runs(proxy, scratch, tmp_path):
    """The classic builder's progress is one long response: a step's output must be on the
    client's screen while a later step is still running, not when the build ends."""
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN echo marker-$((6*7))\nRUN sleep 5\n"
    )
    image = scratch.name("progress")
    build = popen_docker(proxy.host, "build", "--no-cache", "-t", image, str(context),
                         env_extra={"DOCKER_BUILDKIT": "0"})
    try:
        started = time.monotonic()
        line = LineReader(build).wait_for_line(b"marker-42", 60)
        assert line is not None and line.strip() == b"marker-42", line
        shown = time.monotonic()
        assert build.poll() is None, "the build had already ended when its progress arrived"
        assert build.wait(60) == 0
        finished = time.monotonic()
        assert finished - shown >= 3, (
            f"the step's output arrived {shown - started:.1f} s in, only "
            f"{finished - shown:.1f} s before the end of a build with 5 s still to go")
    finally:
        end(build)

"""Powerstrip's overhead against the direct socket, measured in one run.

Starts a Powerstrip (and, when installed, an HAProxy in TCP mode for comparison) in front of a
Docker Engine — the one at --docker-host, else a throwaway engine — and measures each workload
alternately direct and through each proxy, printing ratios to direct:

- latency of GET /_ping and GET /v1.41/containers/json on one keep-alive connection (median),
  requests back to back,
  through each proxy's TCP listener and through its unix listener (``ps-unix``, ``hap-unix``:
  the direct socket's own transport, so the ratio is the proxy's cost without TCP loopback's),
  and through a second Powerstrip started with ``--busy-poll 0``, which sleeps in every poll
  (``ps-sleeper``, ``sleeper-unix``), to show what busy-polling gains, and through a second
  HAProxy with its own ``busy-polling`` option (``hap-busy``, ``hap-busy-unix``), to compare
  busy-polling with busy-polling;
- latency of GET /_ping with the client pausing 1 ms before each request, which busy-polling
  must not make slower;
- what observing costs those requests: ``ps-admin`` serves ``--admin`` (metrics counted,
  nobody scraping), ``ps-audit`` also writes ``--audit-log``;
- wall time of ``docker run --rm busybox true``;
- throughput of a 256 MiB response (container logs) and a 256 MiB request body (images/load);
- the proxy's peak RSS (VmHWM) after those transfers;
- a burst: 300 ``GET /events`` connections opened at once, and the time until every response
  head arrived (``bench/burst.py``), through every proxy and through Powerstrips that call an
  adapter for every request (``ps+hook``: the plain adapter; ``ps+sdk-hook``: one written with
  the SDK, ``bench/sdk_null.py``), through a Powerstrip serving from two worker processes
  (``ps-2w``, ``ps-2w-unix``: ``--workers 2``) and through the yardsticks of
  ``bench/floor.py``; then 100
  keep-alive clients at once sending hooked requests, and how many connections the proxy opened
  to the adapter for them;
- the cost of a hook: container creates through 0, 1 and 3 null pre-hooks of the plain adapter
  (``bench/plain_adapter.py``, asyncio, none of Powerstrip's code), beside the same call posted
  straight to that adapter; Powerstrip's share of a hook is what it adds beyond that.

Beside the proxies, the latency workloads measure two yardsticks from ``bench/floor.py``: the
cheapest forwarder Python can be (``py-copy``: an epoll loop copying bytes) and the same loop
running every byte through llhttp (``py-llhttp``), each on TCP and on unix. They show how much
of a ratio is the kernel's and the language's, and how much is Powerstrip's own.

With ``--compare REV`` a second Powerstrip, built from git revision REV (``base``, ``base-unix``,
``base N hooks``), takes turns with the others in every workload, and a summary puts both trees'
ratios to direct side by side (``bench/compare.py``).

Usage: python bench/bench.py [--docker-host unix:///path] [--rounds N] [--size-mib 256]
       [--compare REV] [--only latency transfers burst hooks]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from burst import burst, concurrent_requests  # bench/burst.py, beside this script
from compare import Baseline  # bench/compare.py, beside this script

from powerstrip.hooks.wire import ClientRequest, pre_hook_call
from powerstrip_dev import engine as engine_mod
from powerstrip_dev.processes import ServiceError, start_proxy, start_service

DOCKER = shutil.which("docker") or "/usr/local/bin/docker"
BENCH = Path(__file__).resolve().parent


class Target:
    """Somewhere to send Docker API requests: the daemon itself or a proxy in front of it."""

    def __init__(self, name: str, docker_host: str, frozen_pid: int | None = None) -> None:
        self.name = name
        self.docker_host = docker_host
        # A proxy that spins a core all the time (HAProxy's busy-polling) would take that core
        # from every other target's measurement on a small machine: it is kept stopped
        # (SIGSTOP) except while its own requests run.
        self.frozen_pid = frozen_pid

    def thaw(self) -> None:
        if self.frozen_pid is not None:
            os.kill(self.frozen_pid, signal.SIGCONT)

    def freeze(self) -> None:
        if self.frozen_pid is not None:
            os.kill(self.frozen_pid, signal.SIGSTOP)

    def connect(self) -> socket.socket:
        if self.docker_host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.docker_host[len("unix://"):])
        else:
            host, port = self.docker_host[len("tcp://"):].rsplit(":", 1)
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def read_response(sock: socket.socket, buffer: bytearray) -> None:
    """Read one complete response (Content-Length or chunked) from a keep-alive connection."""
    while b"\r\n\r\n" not in buffer:
        buffer += sock.recv(65536)
    head_end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:head_end]).lower()
    del buffer[:head_end]
    if head.startswith((b"http/1.1 204", b"http/1.1 304")):
        return
    if b"content-length:" in head:
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        while len(buffer) < length:
            buffer += sock.recv(65536)
        del buffer[:length]
    else:
        while not buffer.endswith(b"0\r\n\r\n"):
            buffer += sock.recv(65536)
        buffer.clear()


def latency(
    targets: list[Target], path: str, rounds: int, per_round: int = 200, pause: float = 0.0,
) -> dict:
    """Median round trip per target, measured in interleaved blocks; the client sleeps
    ``pause`` seconds before each request (0: requests back to back)."""
    request = f"GET {path} HTTP/1.1\r\nHost: api.moby.localhost\r\n\r\n".encode()
    socks = {t.name: t.connect() for t in targets}
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    buffer = bytearray()
    for _ in range(rounds):
        for target in targets:
            sock = socks[target.name]
            target.thaw()
            for _ in range(per_round):
                if pause:
                    time.sleep(pause)
                started = time.perf_counter()
                sock.sendall(request)
                read_response(sock, buffer)
                samples[target.name].append(time.perf_counter() - started)
            target.freeze()
    for sock in socks.values():
        sock.close()
    return {name: statistics.median(values) for name, values in samples.items()}


def docker_run_wall(targets: list[Target], rounds: int) -> dict:
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(rounds):
        for target in targets:
            started = time.perf_counter()
            subprocess.run(
                [DOCKER, "run", "--rm", "busybox", "true"], check=True,
                env={**os.environ, "DOCKER_HOST": target.docker_host},
                stdout=subprocess.DEVNULL,
            )
            samples[target.name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def read_all(sock: socket.socket) -> int:
    total = 0
    buf = bytearray(1 << 20)
    while True:
        n = sock.recv_into(buf)
        if not n:
            return total
        total += n


def interleaved_rates(
    targets: list[Target], rounds: int, exchange: Callable[[socket.socket], int]
) -> dict:
    """The median MiB/s of ``exchange`` (given a fresh connection, it returns the bytes it
    moved) per target, the targets taking turns in every round."""
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(rounds):
        for target in targets:
            sock = target.connect()
            started = time.perf_counter()
            try:
                size = exchange(sock)
            except RuntimeError as exc:
                raise RuntimeError(f"via {target.name}: {exc}") from None
            elapsed = time.perf_counter() - started
            sock.close()
            samples[target.name].append(size / elapsed / 2**20)
    return {name: statistics.median(values) for name, values in samples.items()}


def logs_throughput(targets: list[Target], container: str, rounds: int) -> dict:
    """MiB/s reading a container's whole log (a 256 MiB response)."""
    request = (
        f"GET /v1.41/containers/{container}/logs?stdout=1 HTTP/1.1\r\n"
        "Host: api.moby.localhost\r\nConnection: close\r\n\r\n"
    ).encode()

    def exchange(sock: socket.socket) -> int:
        sock.sendall(request)
        return read_all(sock)

    return interleaved_rates(targets, rounds, exchange)


def load_throughput(targets: list[Target], tarball: Path, rounds: int) -> dict:
    """MiB/s sending an image tarball to images/load (a 256 MiB request body)."""
    size = tarball.stat().st_size
    head = (
        "POST /v1.41/images/load?quiet=1 HTTP/1.1\r\nHost: api.moby.localhost\r\n"
        f"Content-Type: application/x-tar\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    ).encode()

    def exchange(sock: socket.socket) -> int:
        sock.sendall(head)
        with tarball.open("rb") as body:
            sock.sendfile(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        if b" 200 " not in answer.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"images/load failed: {answer[:300]!r}")
        return size

    return interleaved_rates(targets, rounds, exchange)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def start_powerstrip(
    upstream: str, workdir: Path, name: str, config: Path | None = None,
    unix_socket: Path | None = None, busy_poll: int | None = None, workers: int | None = None,
    options: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, str]:
    """Start a Powerstrip on a free TCP port (and on ``unix_socket`` too, when given), its
    output in ``workdir/NAME.out`` and ``.err``; return the process and its TCP address.
    ``options`` are more ``serve`` flags."""
    extra = ["--listen", f"unix://{unix_socket}"] if unix_socket is not None else []
    extra += list(options)
    if busy_poll is not None:
        extra += ["--busy-poll", str(busy_poll)]
    if workers is not None:
        extra += ["--workers", str(workers)]
    try:
        # An empty POWERSTRIP_BUSY_POLL: the proxy's default, not whatever this shell set.
        proxy = start_proxy(upstream, *extra, config=config, logdir=workdir, name=name,
                            env={"POWERSTRIP_BUSY_POLL": "", "POWERSTRIP_WORKERS": ""})
    except ServiceError as exc:
        raise RuntimeError(f"powerstrip did not start: {exc}") from None
    return proxy.proc, proxy.docker_host


def start_haproxy(socket_path: str, workdir: Path,
                  busy_polling: bool = False) -> tuple[subprocess.Popen, str] | None:
    """Start an HAProxy in TCP mode on a free port and on ``workdir/haproxy.sock``
    (``workdir/haproxy-busy.sock`` with HAProxy's own ``busy-polling`` option)."""
    binary = shutil.which("haproxy")
    if binary is None:
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = "haproxy-busy" if busy_polling else "haproxy"
    config = workdir / f"{name}.cfg"
    config.write_text(
        # One thread spinning, not one per core.
        "global\n  maxconn 1000\n" + ("  busy-polling\n  nbthread 1\n" if busy_polling else "")
        + "defaults\n  mode tcp\n  timeout connect 5s\n"
        "  timeout client 1h\n  timeout server 1h\n"
        f"listen docker\n  bind 127.0.0.1:{port}\n  bind unix@{workdir / (name + '.sock')}\n"
        f"  server d {socket_path}\n"
    )
    proc = subprocess.Popen([binary, "-f", str(config), "-db"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"tcp://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def start_floors(socket_path: str, workdir: Path) -> tuple[list[subprocess.Popen], list[Target]]:
    """Start the two yardstick forwarders of ``floor.py`` (bytes copied; bytes copied through
    llhttp), each on a free TCP port and a unix socket."""
    processes: list[subprocess.Popen] = []
    targets: list[Target] = []
    script = Path(__file__).resolve().parent / "floor.py"
    for name, extra in (("py-copy", []), ("py-llhttp", ["--http"])):
        port = free_port()
        path = workdir / f"{name}.sock"
        proc = subprocess.Popen(
            [sys.executable, str(script), "--upstream", socket_path, "--tcp", str(port),
             "--unix", str(path), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        processes.append(proc)
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"bench/floor.py {' '.join(extra)} did not start")
        targets += [Target(name, f"tcp://127.0.0.1:{port}"),
                    Target(name.replace("py-", "") + "-unix", f"unix://{path}")]
    return processes, targets


def docker(host: str, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(
        [DOCKER, *args], check=True, input=input, capture_output=True,
        env={**os.environ, "DOCKER_HOST": host},
    ).stdout


def prepare_payloads(host: str, size_mib: int, workdir: Path) -> tuple[str, Path]:
    """A container whose log is ``size_mib`` MiB, and an image tarball of about that size."""
    name = f"bench-logs-{uuid.uuid4().hex[:8]}"
    # 3 bytes of random data become 4 of base64 (plus newlines): size the source to match.
    source = size_mib * 2**20 * 3 // 4
    docker(host, "run", "--name", name, "busybox", "sh", "-c",
           f"head -c {source} /dev/urandom | base64")
    rootfs = workdir / "rootfs"
    rootfs.mkdir()
    with (rootfs / "blob").open("wb") as blob:
        blob.write(os.urandom(size_mib * 2**20))
    tag = f"bench-load:{uuid.uuid4().hex[:8]}"
    archive = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], check=True,
                             capture_output=True).stdout
    docker(host, "import", "-", tag, input=archive)
    tarball = workdir / "image.tar"
    docker(host, "save", "-o", str(tarball), tag)
    shutil.rmtree(rootfs)
    return name, tarball


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_adapter(script: str, workdir: Path, name: str, processes: list) -> str:
    """Start ``bench/SCRIPT`` as an adapter on a free loopback port; return its URL."""
    service = start_service(name, [sys.executable, str(BENCH / script), "--listen",
                                   "127.0.0.1:0"], workdir)
    processes.append(service.proc)
    return service.url


def post_raw(url: str, path: str, body: bytes) -> bytes:
    """POST ``body`` to ``url``'s ``path`` on a fresh connection; the response's body."""
    host, port = url[len("http://"):].rstrip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                     "Connection: close\r\n\r\n".encode() + body)
        answer = read_all_bytes(sock)
    return answer.split(b"\r\n\r\n", 1)[1]


def read_all_bytes(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def adapter_stats(url: str) -> dict:
    """The plain adapter's account of its own time and connections since the last call; it
    starts afresh."""
    import json

    return json.loads(post_raw(url, "/stats", b""))


def hooked_proxy(host: str, workdir: Path, name: str, url: str, processes: list,
                 endpoint: str = "* *") -> Target:
    """A Powerstrip whose only configuration is a pre-hook on ``endpoint`` (every request, by
    default) calling the adapter at ``url``."""
    config = workdir / f"{name}.yml"
    config.write_text(f'endpoints:\n  "{endpoint}":\n    pre: [a]\nadapters:\n  a: {url}\n')
    proc, proxy_host = start_powerstrip(host, workdir, name, config)
    processes.append(proc)
    return Target(name, proxy_host)


def burst_workloads(host: str, workdir: Path, targets: list[Target], connections: int,
                    rounds: int, processes: list) -> list[tuple[str, dict, str]]:
    """``connections`` concurrent ``GET /events`` (time until every response head arrived)
    through every target and through Powerstrips that call an adapter for every request (the
    plain one, ``ps+hook``, and one written with the SDK, ``ps+sdk-hook``); then 100 keep-alive
    clients at once sending hooked ``GET /_ping`` requests back to back, and how many
    connections the proxy opened to the adapter for them."""
    plain = start_adapter("plain_adapter.py", workdir, "plain-adapter", processes)
    sdk = start_adapter("sdk_null.py", workdir, "sdk-adapter", processes)
    hooked = hooked_proxy(host, workdir, "ps+hook", plain, processes)
    with_sdk = hooked_proxy(host, workdir, "ps+sdk-hook", sdk, processes)
    results = []
    adapter_stats(plain)
    timings = burst(targets + [hooked, with_sdk], connections, rounds)
    calls = adapter_stats(plain)
    label = f"{connections} concurrent GET /events, until every response head"
    results.append((label, {name: t["last"] for name, t in timings.items()}, "ms"))
    results.append((label + ", worst of the rounds",
                    {name: t["worst"] for name, t in timings.items()}, "ms"))
    print(f"bench: the adapter answered {calls['calls']} calls of the bursts over "
          f"{calls['connections']} connections", file=sys.stderr)
    clients, each = 100, 50
    ping = b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"
    rates = {}
    for target in (targets[0], hooked):
        elapsed = concurrent_requests(target.docker_host, clients, each, ping)
        rates[target.name] = clients * each / elapsed
    opened = adapter_stats(plain)["connections"]
    results.append((f"{clients} keep-alive clients, GET /_ping back to back (requests/s; "
                    f"{opened} adapter connections opened for {clients * each} hooked)",
                    rates, "/s"))
    return results


def hook_cost(host: str, workdir: Path, rounds: int, processes: list,
              baseline: Baseline | None = None) -> dict[str, dict]:
    """Median time of POST /containers/create with 0, 1 and 3 null pre-hooks, for a real create
    (each container removed directly afterwards) and for a create the daemon refuses at once
    (no such image), where the daemon's own time does not drown the hooks' cost.

    The hooks call the plain adapter (``bench/plain_adapter.py``, asyncio, not Powerstrip's
    code), which keeps account of its own time per call. Beside the proxies, the bench posts
    the very call a hook makes (``adapter rtt``) straight to the adapter over a keep-alive
    connection of its own, taking its turn with them: what a hook costs beyond that round trip
    is Powerstrip's share. The adapter's own account of its time (``adapter own``, head read to
    answer written) is returned under ``"adapter"``."""
    url = start_adapter("plain_adapter.py", workdir, "plain-hook-adapter", processes)
    adapter_host = "tcp://" + url[len("http://"):].rstrip("/")
    targets = [Target("direct", host)]
    for count in (0, 1, 3):
        config = workdir / f"hooks-{count}.yml"
        names = ", ".join(f"null{i}" for i in range(count))
        adapters = "".join(f"  null{i}: {url}\n" for i in range(count))
        config.write_text(
            f'endpoints:\n  "POST /*/containers/create":\n    pre: [{names}]\n'
            + (f"adapters:\n{adapters}" if adapters else "adapters: {}\n")
        )
        proc, proxy_host = start_powerstrip(host, workdir, f"powerstrip-{count}-hooks", config)
        processes.append(proc)
        targets.append(Target(f"{count} hooks", proxy_host))
        if baseline is not None:
            proc, proxy_host = baseline.start_powerstrip(host, workdir, f"base-{count}-hooks",
                                                         config)
            processes.append(proc)
            targets.append(Target(f"base {count} hooks", proxy_host))
    socks = {t.name: t.connect() for t in targets}
    cleanup = targets[0].connect()
    results: dict[str, dict] = {}
    for image, count in (("busybox", rounds), ("no-such-image", rounds * 10)):
        body = b'{"Image": "%s", "Cmd": ["true"]}' % image.encode()
        request = (
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        # The call a hook makes for this request, as the proxy sends it.
        call = pre_hook_call(ClientRequest("POST", "/v1.41/containers/create", body.decode()))
        direct_call = (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Powerstrip-Call: 0-0\r\nContent-Length: %d\r\n\r\n%s" % (len(call), call)
        )
        rtt = Target("adapter rtt", adapter_host)
        socks[rtt.name] = rtt.connect()
        requests = {t.name: request for t in targets}
        requests[rtt.name] = direct_call
        adapter_stats(url)
        results[image] = _creates(targets + [rtt], socks, cleanup, requests, count)
        results[image]["adapter own"] = adapter_stats(url)["median_us"] / 1e6
    return results


def _creates(targets: list[Target], socks: dict, cleanup: socket.socket,
             requests: dict[str, bytes], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    buffer = bytearray()
    for _ in range(rounds):
        for target in targets:
            sock = socks[target.name]
            started = time.perf_counter()
            sock.sendall(requests[target.name])
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(65536)
            head_end = buffer.index(b"\r\n\r\n") + 4
            length = int(bytes(buffer[:head_end]).lower().split(b"content-length:")[1]
                         .split(b"\r\n")[0])
            while len(buffer) < head_end + length:
                buffer += sock.recv(65536)
            samples[target.name].append(time.perf_counter() - started)
            answer = bytes(buffer[head_end:head_end + length])
            del buffer[:head_end + length]
            if b'"Id":"' in answer:
                container = answer.split(b'"Id":"')[1].split(b'"')[0].decode()
                cleanup.sendall(f"DELETE /v1.41/containers/{container} HTTP/1.1\r\n"
                                "Host: x\r\n\r\n".encode())
                read_response(cleanup, bytearray())
    return {name: statistics.median(values) for name, values in samples.items()}


def at_least_one(value: str) -> int:
    """A count of rounds: a ratio needs at least one measurement on each side."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count of at least 1")
    return number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker-host", help="a running daemon (unix://...); default: throwaway")
    parser.add_argument("--rounds", type=at_least_one, default=20,
                        help="latency rounds (200 requests each)")
    parser.add_argument("--transfer-rounds", type=at_least_one, default=3)
    parser.add_argument("--size-mib", type=at_least_one, default=256)
    parser.add_argument("--no-haproxy", action="store_true")
    parser.add_argument("--no-floor", action="store_true",
                        help="latency: leave out the yardstick forwarders of bench/floor.py")
    parser.add_argument("--no-sleeper", action="store_true",
                        help="latency: leave out the Powerstrip started with --busy-poll 0 "
                             "and the HAProxy with busy-polling")
    parser.add_argument("--hook-rounds", type=at_least_one, default=40)
    parser.add_argument("--compare", metavar="REV",
                        help="also measure a Powerstrip built from git revision REV (base)")
    parser.add_argument("--burst-connections", type=at_least_one, default=300,
                        help="connections opened at once by the burst workload")
    parser.add_argument("--burst-rounds", type=at_least_one, default=5)
    parser.add_argument("--only", nargs="+",
                        choices=["latency", "transfers", "burst", "hooks"],
                        default=["latency", "transfers", "burst", "hooks"],
                        help="workloads to run")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ps-bench-"))
    throwaway = None
    host = args.docker_host
    if host is None:
        engine_mod.ensure_packages()
        throwaway = engine_mod.Engine(workdir / "engine")
        throwaway.start()
        throwaway.ensure_image()
        host = throwaway.host
    processes: list[subprocess.Popen] = []
    try:
        powerstrip, powerstrip_host = start_powerstrip(
            host, workdir, "powerstrip", unix_socket=workdir / "powerstrip.sock")
        processes.append(powerstrip)
        targets = [Target("direct", host), Target("powerstrip", powerstrip_host)]
        # The same proxies on a unix listener, the direct socket's own transport: their
        # latency against direct is the proxy's cost alone, without TCP loopback's.
        unix_targets = [Target("ps-unix", f"unix://{workdir / 'powerstrip.sock'}")]
        baseline = Baseline(args.compare, workdir) if args.compare else None
        if baseline is not None:
            base, base_host = baseline.start_powerstrip(
                host, workdir, "base", unix_socket=workdir / "base.sock")
            processes.append(base)
            targets.append(Target("base", base_host))
            unix_targets.append(Target("base-unix", f"unix://{workdir / 'base.sock'}"))
        if "latency" in args.only:
            # What observing costs a request no hook sees: the metrics on (--admin, nobody
            # scraping), and the metrics with an audit line per request (--audit-log).
            observed, observed_host = start_powerstrip(
                host, workdir, "ps-admin", options=("--admin", "tcp://127.0.0.1:0"))
            processes.append(observed)
            audited, audited_host = start_powerstrip(
                host, workdir, "ps-audit", options=("--admin", "tcp://127.0.0.1:0",
                                                    "--audit-log", str(workdir / "audit.log")))
            processes.append(audited)
            unix_targets += [Target("ps-admin", observed_host),
                             Target("ps-audit", audited_host)]
        sleeper_targets: list[Target] = []
        if "latency" in args.only and not args.no_sleeper:
            sleeper, sleeper_host = start_powerstrip(
                host, workdir, "sleeper", unix_socket=workdir / "sleeper.sock", busy_poll=0)
            processes.append(sleeper)
            sleeper_targets = [Target("ps-sleeper", sleeper_host),
                               Target("sleeper-unix", f"unix://{workdir / 'sleeper.sock'}")]
        if not args.no_haproxy:
            if shutil.which("haproxy") is None:
                print("bench: no haproxy on PATH, so no HAProxy column "
                      "(apt-get install haproxy to compare; --no-haproxy to say so)",
                      file=sys.stderr)
            started = start_haproxy(host[len("unix://"):], workdir)
            if started is not None:
                processes.append(started[0])
                targets.append(Target("haproxy", started[1]))
                unix_targets.append(Target("hap-unix", f"unix://{workdir / 'haproxy.sock'}"))
            if "latency" in args.only and not args.no_sleeper:
                # HAProxy with its own busy-polling, so that busy-polling is compared with
                # busy-polling as well as with a proxy that sleeps.
                started = start_haproxy(host[len("unix://"):], workdir, busy_polling=True)
                if started is not None:
                    processes.append(started[0])
                    pid = started[0].pid
                    sleeper_targets += [
                        Target("hap-busy", started[1], frozen_pid=pid),
                        Target("hap-busy-unix", f"unix://{workdir / 'haproxy-busy.sock'}",
                               frozen_pid=pid)]
                    sleeper_targets[-1].freeze()

        floor_targets: list[Target] = []
        if ("latency" in args.only or "burst" in args.only) and not args.no_floor:
            floors, floor_targets = start_floors(host[len("unix://"):], workdir)
            processes += floors

        results: list[tuple[str, dict, str]] = []
        rss = None
        if "latency" in args.only:
            for path in ("/_ping", "/v1.41/containers/json"):
                results.append((f"GET {path} latency",
                                latency(targets + unix_targets + sleeper_targets + floor_targets,
                                        path, args.rounds), "us"))
            # A client that pauses between requests, as most do: busy-polling must not cost it.
            results.append(("GET /_ping latency, 1 ms pause before each request",
                            latency(targets + [t for t in sleeper_targets
                                               if t.docker_host.startswith("tcp://")], "/_ping",
                                    max(1, args.rounds // 2), per_round=100, pause=0.001),
                            "us"))
            results.append(("docker run --rm wall time", docker_run_wall(targets, 5), "s"))
        if "transfers" in args.only:
            container, tarball = prepare_payloads(host, args.size_mib, workdir)
            results.append((f"{args.size_mib} MiB response (logs)",
                            logs_throughput(targets, container, args.transfer_rounds), "MiB/s"))
            results.append((f"{args.size_mib} MiB request body (images/load)",
                            load_throughput(targets, tarball, args.transfer_rounds), "MiB/s"))
            rss = peak_rss_mib(powerstrip.pid)
            docker(host, "rm", "-f", container)
        if "burst" in args.only:
            # Two worker processes sharing the listeners: what a second core buys a burst.
            workers, workers_host = start_powerstrip(
                host, workdir, "ps-2w", unix_socket=workdir / "ps-2w.sock", workers=2)
            processes.append(workers)
            worker_targets = [Target("ps-2w", workers_host),
                              Target("ps-2w-unix", f"unix://{workdir / 'ps-2w.sock'}")]
            # The yardsticks on TCP: the least a Python forwarder spends per connection.
            results += burst_workloads(
                host, workdir, targets + unix_targets + worker_targets + [
                    t for t in floor_targets if t.docker_host.startswith("tcp://")],
                args.burst_connections, args.burst_rounds, processes)

        for label, values, unit in results:
            scale = {"us": 1e6, "ms": 1e3}.get(unit, 1)
            print(f"{label}")
            for name, value in values.items():
                print(f"  {name:14}{value * scale:>10.1f} {unit:6}"
                      f"{value / values['direct']:>7.2f}x direct")
        if rss is not None:
            print(f"powerstrip peak RSS (VmHWM)\n  {'powerstrip':14}{rss:>10.1f} MiB")
        if "hooks" in args.only:
            for image, creates in hook_cost(host, workdir, args.hook_rounds, processes,
                                            baseline).items():
                rtt, own = creates.pop("adapter rtt"), creates.pop("adapter own")
                results.append((f"POST /containers/create ({image})", creates, "s"))
                print(f"\n{'POST /containers/create (' + image + ')':34}{'median':>12}"
                      f"{'/direct':>10}{'added per hook':>17}{'Powerstrip share':>19}")
                for name, value in creates.items():
                    count = int(name.split()[-2]) if name != "direct" else 0
                    zero = creates[name.replace(f"{count} hooks", "0 hooks")]
                    added = share = ""
                    if count:
                        per_hook = (value - zero) / count
                        added = f"{per_hook * 1000:>14.3f} ms"
                        share = f"{(per_hook - rtt) * 1000:>16.3f} ms"
                    print(f"{'  ' + name:34}{value * 1000:>9.3f} ms"
                          f"{value / creates['direct']:>9.2f}x{added:>17}{share:>19}")
                print(f"{'  adapter round trip, direct':34}{rtt * 1000:>9.3f} ms"
                      f"{'(share = added per hook - this)':>46}")
                print(f"{'  adapter own time, in-process':34}{own * 1000:>9.3f} ms")
        if baseline is not None:
            baseline.summary(results, rss)
        return 0
    finally:
        for proc in processes:
            proc.terminate()
            proc.send_signal(signal.SIGCONT)  # a frozen one acts on SIGTERM only once thawed
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if throwaway is not None:
            throwaway.stop(remove=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

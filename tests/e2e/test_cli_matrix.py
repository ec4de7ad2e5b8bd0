"""The docker CLI, direct to the daemon and through the proxy: same command, same result.

Each scenario runs its command against ``targets["direct"]`` and then ``targets["proxy"]`` and
compares. Outputs are compared after ``normalise`` only where the daemon itself would answer
differently a moment later (IDs of objects created per run, "2 seconds ago", sizes); streams that
are replayed from stored state (logs, archives) are compared byte for byte.

With ``POWERSTRIP_E2E_HOOKED=1`` the proxy runs the policy adapter, with the ``endpoints`` rule of
the shipped ``adapters/policy.yml`` alone, and then the null adapter as pre-hooks on every
request: the allowlist shipped for the docker CLI must let every command here through.

With ``POWERSTRIP_E2E_AUTHZ=1`` both targets are a dockerd of the module's own started with
``--authorization-plugin=powerstrip-policy``, the same policy served as a Docker plugin
(``--plugin``): every command, direct and through the proxy, passes dockerd's own authorization;
and the proxy calls that plugin as an adapter (``plugin: authz``) on every request too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from powerstrip.hooks import yamlfile
from powerstrip_dev.engine import Engine
from tests.e2e.conftest import (
    DOCKER_CLI,
    HOOKED,
    LEGACY_CLI,
    LineReader,
    PtyProcess,
    docker,
    docker_env,
    end,
    launch_proxy,
    normalise,
    ok,
    popen_docker,
    start_adapter,
    start_null_adapter,
    stop_proxy,
    wait_for,
)

T = TypeVar("T")

pytestmark = pytest.mark.timeout(60)

POLICY = Path(__file__).resolve().parents[2] / "adapters" / "policy.py"
SHIPPED_RULES = POLICY.with_name("policy.yml")


AUTHZ = os.environ.get("POWERSTRIP_E2E_AUTHZ", "") not in ("", "0")
PLUGIN = "powerstrip-policy"


def endpoints_rules(workdir: Path) -> Path:
    """The shipped rules' endpoints allowlist alone, so that only the endpoints rule can
    refuse (JSON is YAML)."""
    doc = yamlfile.load(SHIPPED_RULES.read_text(), str(SHIPPED_RULES))
    rules = workdir / "rules.yml"
    rules.write_text(json.dumps({"version": 1,
                                 "rules": {"endpoints": doc["rules"]["endpoints"]}}))
    return rules


def check_policy_log(log: str) -> None:
    """The policy saw requests and refused none (every refusal would have failed its scenario;
    this names the endpoint in one place)."""
    assert "Traceback" not in log, log
    assert "HEAD /_ping" in log, "the policy saw no requests"
    refused = [line for line in log.splitlines()
               if " refused " in line or " refused:" in line or " denied" in line]
    assert not refused, refused


@pytest.fixture(scope="module")
def targets(engine: Engine, targets: dict[str, str]) -> Iterator[dict[str, str]]:
    """The session's targets; hooked, a proxy of this module's own whose every request passes
    the shipped endpoints allowlist (the policy adapter) and then the null adapter; with
    AuthZ, a guarded engine of the module's own, direct and through a proxy."""
    if AUTHZ:
        yield from _authz_targets()
        return
    if not HOOKED:
        yield targets
        return
    workdir = Path(tempfile.mkdtemp(prefix="ps-matrix-"))
    rules = endpoints_rules(workdir)
    policy = start_adapter([sys.executable, str(POLICY), "--listen", "127.0.0.1:0",
                            "--rules", str(rules)], "policy-adapter")
    null = start_null_adapter()
    try:
        config = workdir / "adapters.yml"
        config.write_text('version: 1\nendpoints:\n  "* *":\n    pre: [policy, null_adapter]\n'
                          f"    post: [null_adapter]\nadapters:\n  policy: {policy.url}\n"
                          f"  null_adapter: {null.url}\n")
        running = launch_proxy(engine.host, config)
        try:
            yield {"direct": engine.host, "proxy": running.host}
        finally:
            stop_proxy(running)
    finally:
        log = policy.log()
        policy.stop()
        null.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        check_policy_log(log)


def _authz_targets() -> Iterator[dict[str, str]]:
    from powerstrip.testing import short_tmpdir

    workdir = Path(short_tmpdir("ps-matrix-authz-"))
    plugins = workdir / "plugins"
    policy = start_adapter([sys.executable, str(POLICY), "--listen", "127.0.0.1:0",
                            "--rules", str(endpoints_rules(workdir)), "--plugin", PLUGIN,
                            "--plugin-dir", str(plugins)], "policy-plugin")
    guarded = Engine(workdir / "engine", plugin_dir=plugins)
    running = None
    try:
        guarded.start()
        guarded.ensure_image()  # before the plugin guards it: an import is not a CLI command
        guarded.stop()
        guarded.args = (f"--authorization-plugin={PLUGIN}",)
        guarded.start()
        # Powerstrip calls the same plugin as an adapter, before and after the daemon.
        config = workdir / "adapters.yml"
        config.write_text('version: 1\nendpoints:\n  "* *": {pre: [policy], post: [policy]}\n'
                          "adapters:\n  policy: {plugin: authz, socket: "
                          f'"unix://{plugins / (PLUGIN + ".sock")}"}}\n')
        running = launch_proxy(guarded.host, config)
        yield {"direct": guarded.host, "proxy": running.host}
    finally:
        if running is not None:
            proxied = running.stderr()
            stop_proxy(running)
            assert "plugin activated" in proxied and "adapter policy pre-hook for" in proxied
        guarded.stop(remove=True)
        log = policy.log()
        policy.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        check_policy_log(log)


def each(targets: dict[str, str], run: Callable[[str], T]) -> dict[str, T]:
    """``run(host)`` for the direct host, then the proxy."""
    return {label: run(host) for label, host in targets.items()}


def assert_same(results: dict[str, bytes], exact: bool = False) -> None:
    """The proxied result equals the direct one (after ``normalise`` unless ``exact``)."""
    if exact:
        assert results["proxy"] == results["direct"]
    else:
        assert normalise(results["proxy"]) == normalise(results["direct"])


def running_container(host: str, name: str, command: str = "sleep 300") -> None:
    """Start ``name`` detached and wait until the daemon reports it running."""
    ok(docker(host, "run", "-d", "--name", name, "busybox", "sh", "-c", command))
    assert wait_for(lambda: inspect(host, name, "{{.State.Running}}") == "true", 10)


def inspect(host: str, name: str, template: str) -> str:
    """``docker inspect --format template name``, stripped."""
    return ok(docker(host, "inspect", "--format", template, name)).decode().strip()


def md5(data: bytes) -> str:
    """Hex MD5, as busybox md5sum prints it."""
    return hashlib.md5(data).hexdigest()


# -- daemon-wide reads --------------------------------------------------------------------


def test_version(targets):
    out = each(targets, lambda h: ok(docker(h, "version")))
    server = {label: text.split(b"\nServer:", 1) for label, text in out.items()}
    assert len(server["direct"]) == 2 and b"Engine:" in server["direct"][1]
    assert server["proxy"][1] == server["direct"][1]
    # Same client binary, same negotiated API version, so the client half agrees too.
    assert_same(out)
    fmt = each(targets, lambda h: ok(docker(h, "version", "--format", "{{json .Server}}")))
    assert json.loads(fmt["proxy"]) == json.loads(fmt["direct"])


def sorted_runtimes(info: bytes) -> bytes:
    """``docker info`` with its Runtimes list sorted: dockerd prints it in Go map order."""
    lines = info.split(b"\n")
    for index, line in enumerate(lines):
        label, sep, runtimes = line.partition(b"Runtimes: ")
        if sep:
            lines[index] = label + sep + b" ".join(sorted(runtimes.split()))
    return b"\n".join(lines)


def test_info(targets):
    out = each(targets, lambda h: sorted_runtimes(ok(docker(h, "info"))))
    assert b"Storage Driver: vfs" in out["direct"]
    assert_same(out)


def test_ps(targets, scratch):
    direct = targets["direct"]
    running, exited = scratch.name("ps-up"), scratch.name("ps-exited")
    running_container(direct, running)
    ok(docker(direct, "run", "--name", exited, "busybox", "true"))
    for args in (["ps"], ["ps", "-a"], ["ps", "-a", "--no-trunc"], ["ps", "-q"],
                 ["ps", "-a", "--filter", f"name={running}", "--format", "{{json .}}"]):
        out = each(targets, lambda h, args=args: ok(docker(h, *args)))
        assert running.encode() in out["direct"] or args == ["ps", "-q"]
        assert_same(out)


def test_images(targets):
    for args in (["images"], ["images", "-a", "--digests"],
                 ["image", "ls", "--format", "{{json .}}"],
                 ["image", "inspect", "busybox:latest"], ["history", "busybox:latest"]):
        out = each(targets, lambda h, args=args: ok(docker(h, *args)))
        assert out["direct"].strip()
        assert_same(out, exact=args[:2] == ["image", "inspect"])


# -- run ----------------------------------------------------------------------------------


def test_run_echo(targets):
    out = each(targets, lambda h: ok(docker(h, "run", "--rm", "busybox", "echo", "hello", "ps")))
    assert out == {"direct": b"hello ps\n", "proxy": b"hello ps\n"}


def test_exit_codes(targets):
    codes = each(targets, lambda h: docker(h, "run", "--rm", "busybox", "sh", "-c", "exit 3"))
    assert {label: r.returncode for label, r in codes.items()} == {"direct": 3, "proxy": 3}
    missing = each(targets, lambda h: docker(h, "run", "--rm", "busybox", "/no/such/command"))
    assert {label: r.returncode for label, r in missing.items()} == {"direct": 127, "proxy": 127}
    assert b"no such file or directory" in missing["proxy"].stderr


def test_stdout_stderr_separate(targets):
    script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2"
    out = each(targets, lambda h: docker(h, "run", "--rm", "busybox", "sh", "-c", script))
    for result in out.values():
        assert (result.returncode, result.stdout, result.stderr) == (
            0, b"out1\nout2\n", b"err1\nerr2\n")


HUNDRED_THOUSAND_LINES = b"".join(b"line %d of the stdin test\n" % i for i in range(100_000))


@pytest.mark.timeout(90)
def test_run_stdin_line_count(targets):
    out = each(targets, lambda h: ok(docker(
        h, "run", "-i", "--rm", "busybox", "wc", "-l", input=HUNDRED_THOUSAND_LINES)))
    assert out["direct"].strip() == b"100000"
    assert_same(out, exact=True)


@pytest.mark.timeout(90)
def test_run_stdin_md5(targets):
    out = each(targets, lambda h: ok(docker(
        h, "run", "-i", "--rm", "busybox", "md5sum", input=HUNDRED_THOUSAND_LINES)))
    assert out["direct"].decode().split()[0] == md5(HUNDRED_THOUSAND_LINES)
    assert_same(out, exact=True)


def test_run_tty(targets):
    for host in targets.values():
        term = PtyProcess(
            [DOCKER_CLI, "run", "-t", "--rm", "busybox", "sh", "-c", "tty; echo tty-ok"],
            docker_env(host))
        assert term.finish(30) == 0, term.output
        assert b"/dev/pts/" in term.output and b"tty-ok" in term.output, term.output


def test_run_interactive_tty(targets):
    for host in targets.values():
        term = PtyProcess([DOCKER_CLI, "run", "-it", "--rm", "busybox", "sh"], docker_env(host))
        assert term.read_until(b"# ", 15), term.output
        # The arithmetic proves the shell ran the line rather than the terminal echoing it.
        term.write(b"echo typed-$((6*7))\r")
        assert term.read_until(b"typed-42", 10), term.output
        term.write(b"exit 4\r")
        assert term.finish(15) == 4, term.output


def test_create_start_wait(targets, scratch):
    for host in targets.values():
        name = scratch.name("cycle")
        created = ok(docker(host, "create", "--name", name, "busybox",
                            "sh", "-c", "echo ran-once; exit 7")).strip()
        assert len(created) == 64
        assert ok(docker(host, "start", name)).strip() == name.encode()
        assert ok(docker(host, "wait", name)) == b"7\n"
        assert ok(docker(host, "logs", name)) == b"ran-once\n"
        assert inspect(host, name, "{{.State.ExitCode}}") == "7"
        start_attached = docker(host, "start", "-a", name)
        assert (start_attached.returncode, start_attached.stdout) == (7, b"ran-once\n")


# -- exec and attach ----------------------------------------------------------------------


def test_exec(targets, scratch):
    name = scratch.name("exec")
    running_container(targets["direct"], name)
    for host in targets.values():
        assert ok(docker(host, "exec", name, "echo", "exec-out")) == b"exec-out\n"
        assert ok(docker(host, "exec", "-e", "FOO=bar", "-w", "/tmp", name,
                         "sh", "-c", "echo $FOO; pwd")) == b"bar\n/tmp\n"
        failing = docker(host, "exec", name, "sh", "-c", "echo to-err >&2; exit 5")
        assert (failing.returncode, failing.stdout, failing.stderr) == (5, b"", b"to-err\n")


@pytest.mark.timeout(90)
def test_exec_stdin(targets, scratch):
    name = scratch.name("exec-in")
    running_container(targets["direct"], name)
    data = os.urandom(3 * 1024 * 1024)
    for host in targets.values():
        assert ok(docker(host, "exec", "-i", name, "md5sum", input=data)).split()[0] == \
            md5(data).encode()
        assert ok(docker(host, "exec", "-i", name, "wc", "-c", input=data)).strip() == \
            str(len(data)).encode()
        # Stdin closes, the process sees EOF, and output written after that still arrives.
        assert ok(docker(host, "exec", "-i", name, "sh", "-c", "cat >/dev/null; echo after-eof",
                         input=b"x" * 1000)) == b"after-eof\n"


def test_attach(targets, scratch):
    for host in targets.values():
        name = scratch.name("attach")
        ok(docker(host, "run", "-d", "--name", name, "busybox",
                  "sh", "-c", "sleep 3; echo attached-out; echo attached-err >&2"))
        result = docker(host, "attach", "--sig-proxy=false", name, timeout=30)
        assert (result.returncode, result.stdout, result.stderr) == (
            0, b"attached-out\n", b"attached-err\n")


def test_attach_stdin_interactive(targets, scratch):
    for host in targets.values():
        name = scratch.name("attach-in")
        ok(docker(host, "run", "-d", "-i", "--name", name, "busybox",
                  "sh", "-c", "read line; echo got-$line; exit 2"))
        # The reply must come back while stdin is still open: a container started with -d -i
        # keeps stdin open across attaches, and the daemon detaches the output streams as soon
        # as this attach's stdin ends, so nothing would come back after an EOF.
        attach = popen_docker(host, "attach", "--sig-proxy=false", name, stdin=True)
        try:
            attach.stdin.write(b"hello\n")
            attach.stdin.flush()
            assert LineReader(attach).readline(timeout=10) == b"got-hello\n"
            attach.stdin.close()
            assert attach.wait(15) == 2
        finally:
            end(attach)


def test_start_attach_stdin_eof(targets, scratch):
    for host in targets.values():
        name = scratch.name("start-in")
        # create -i sets StdinOnce: the end of the client's stdin closes the container's.
        ok(docker(host, "create", "-i", "--name", name, "busybox",
                  "sh", "-c", "cat | md5sum; echo after-eof; exit 2"))
        data = os.urandom(1024 * 1024)
        result = docker(host, "start", "-a", "-i", name, input=data, timeout=30)
        assert (result.returncode, result.stdout) == (
            2, f"{md5(data)}  -\nafter-eof\n".encode()), result.stderr


# -- logs and events ----------------------------------------------------------------------

# Control bytes, bytes that are not UTF-8, a line far longer than the log driver's 16 KiB buffer,
# and output that ends without a newline.
LOG_SCRIPT = r"""
odd=$(printf '\001\002\177\033[31m\351\377')
i=0
while [ $i -lt 3000 ]; do echo "out $i $odd"; echo "err $i" >&2; i=$((i+1)); done
head -c 100000 /dev/zero | tr '\000' x; echo
printf 'no newline at the end \376'
"""


def test_logs_byte_exact(targets, scratch):
    name = scratch.name("logs")
    ok(docker(targets["direct"], "run", "--name", name, "busybox", "sh", "-c", LOG_SCRIPT))
    assert len(ok(docker(targets["direct"], "logs", name))) > 150_000
    for args in (["logs", name], ["logs", "--timestamps", name], ["logs", "--tail", "7", name],
                 ["logs", "--details", "--since", "0", name]):
        out = each(targets, lambda h, args=args: docker(h, *args))
        assert out["direct"].returncode == 0
        # json-file stores each line as a JSON string, so a byte that is not UTF-8 comes back
        # as U+FFFD: the same substitution both ways, made by the daemon, not the proxy.
        assert out["direct"].stdout.endswith(b"no newline at the end \xef\xbf\xbd")
        assert out["proxy"].returncode == 0
        assert out["proxy"].stdout == out["direct"].stdout
        assert out["proxy"].stderr == out["direct"].stderr


@pytest.mark.timeout(45)
def test_logs_follow_streams(targets, scratch):
    for host in targets.values():
        name = scratch.name("follow")
        running_container(targets["direct"], name,
                          "echo first-line; sleep 3; echo later-line; sleep 120; echo never")
        follow = popen_docker(host, "logs", "-f", name)
        try:
            started = time.monotonic()
            reader = LineReader(follow)
            line = reader.readline(timeout=2.0)
            assert line == b"first-line\n", (
                f"no first line within 2 s (after {time.monotonic() - started:.2f} s): "
                f"{follow.stderr.read1() if follow.poll() is not None else b'(still running)'}")
            # A line written after the CLI began following comes as the container writes it.
            assert reader.readline(timeout=6.0) == b"later-line\n"
            assert follow.poll() is None
            assert inspect(targets["direct"], name, "{{.State.Running}}") == "true"
        finally:
            end(follow)


@pytest.mark.timeout(45)
def test_events_stream_live(targets, scratch):
    for host in targets.values():
        name = scratch.name("events")
        # --since closes the gap between starting the CLI and its subscription reaching the
        # daemon; the destroy event below happens only after the create was seen, so it can
        # only arrive live.
        since = str(int(time.time()) - 1)
        events = popen_docker(host, "events", "--since", since, "--filter", "type=container",
                              "--filter", f"container={name}",
                              "--format", "{{.Action}} {{.Actor.Attributes.name}}")
        try:
            reader = LineReader(events)
            ok(docker(targets["direct"], "create", "--name", name, "busybox"))
            assert reader.wait_for_line(f"create {name}".encode(), 5.0)
            ok(docker(targets["direct"], "rm", name))
            assert reader.wait_for_line(f"destroy {name}".encode(), 5.0)
            assert events.poll() is None
        finally:
            end(events)


@pytest.mark.timeout(45)
def test_abandoned_event_stream_is_released(targets):
    def listeners() -> int:
        return int(ok(docker(targets["direct"], "info", "--format", "{{.NEventsListener}}")))

    baseline = listeners()
    for label, host in targets.items():
        events = popen_docker(host, "events")
        try:
            assert wait_for(lambda: listeners() == baseline + 1, 10, interval=0.2), label
        finally:
            end(events)
        # The client's FIN is all the daemon gets to hear about it: dockerd drops the
        # subscription when its side of the connection reads EOF, which must reach it.
        assert wait_for(lambda: listeners() == baseline, 5, interval=0.2), (
            f"{label}: the daemon still serves an events stream nobody reads "
            f"({listeners()} listeners, {baseline} before)")


# -- build --------------------------------------------------------------------------------

DOCKERFILE = b"FROM busybox\nCOPY blob /blob\nRUN md5sum /blob > /blob.md5\n"


def build_context(directory: Path, size: int) -> str:
    """A build context with a random ``blob`` of ``size`` bytes; returns the blob's MD5."""
    directory.mkdir()
    blob = os.urandom(size)
    (directory / "blob").write_bytes(blob)
    (directory / "Dockerfile").write_bytes(DOCKERFILE)
    return md5(blob)


@pytest.mark.timeout(300)
def test_build_classic(targets, scratch, tmp_path):
    expected = build_context(tmp_path / "ctx", 20 * 1024 * 1024)
    for host in targets.values():
        image = scratch.name("classic")
        ok(docker(host, "build", "-t", image, str(tmp_path / "ctx"),
                  env_extra={"DOCKER_BUILDKIT": "0"}, timeout=240))
        assert ok(docker(host, "run", "--rm", image, "cat", "/blob.md5")) == \
            f"{expected}  /blob\n".encode()


@pytest.mark.timeout(300)
def test_build_buildkit(targets, scratch, tmp_path):
    expected = build_context(tmp_path / "ctx", 4 * 1024 * 1024)
    for host in targets.values():
        image = scratch.name("buildkit")
        result = docker(host, "build", "--progress=plain", "-t", image, str(tmp_path / "ctx"),
                        cli=LEGACY_CLI, env_extra={"DOCKER_BUILDKIT": "1"}, timeout=240)
        ok(result)
        # The daemon's BuildKit, not the legacy builder, did the work.
        assert b"#1 [internal] load build definition" in result.stderr
        assert ok(docker(host, "run", "--rm", image, "cat", "/blob.md5")) == \
            f"{expected}  /blob\n".encode()


# -- files, images and containers as archives ---------------------------------------------


@pytest.mark.timeout(90)
def test_cp_both_ways(targets, scratch, tmp_path):
    name = scratch.name("cp")
    running_container(targets["direct"], name)
    data = os.urandom(5 * 1024 * 1024 + 123)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    archives = {}
    for label, host in targets.items():
        ok(docker(host, "cp", str(source), f"{name}:/tmp/{label}.bin"))
        assert ok(docker(host, "exec", name, "md5sum", f"/tmp/{label}.bin")).split()[0] == \
            md5(data).encode()
        back = tmp_path / f"back-{label}.bin"
        ok(docker(host, "cp", f"{name}:/tmp/{label}.bin", str(back)))
        assert back.read_bytes() == data
        archives[label] = ok(docker(host, "cp", f"{name}:/tmp/direct.bin", "-"))
    assert archives["proxy"] == archives["direct"]


@pytest.mark.timeout(120)
def test_save_load(targets, scratch, tmp_path):
    original_id = inspect(targets["direct"], "busybox:latest", "{{.Id}}")
    saved = {}
    for label, host in targets.items():
        image = f"{scratch.name('saved')}:v1"
        ok(docker(targets["direct"], "tag", "busybox:latest", image))
        archive = tmp_path / f"{label}.tar"
        ok(docker(host, "save", "-o", str(archive), image))
        saved[label] = archive.read_bytes()
        ok(docker(host, "rmi", image))
        assert docker(host, "image", "inspect", image).returncode == 1
        assert ok(docker(host, "load", "-i", str(archive))).strip() == \
            f"Loaded image: {image}".encode()
        assert inspect(host, image, "{{.Id}}") == original_id
    names = {label: sorted(tarfile.open(fileobj=io.BytesIO(data)).getnames())
             for label, data in saved.items()}
    assert names["proxy"] == names["direct"]


@pytest.mark.timeout(90)
def test_export_import(targets, scratch, tmp_path):
    name = scratch.name("export")
    ok(docker(targets["direct"], "run", "--name", name, "busybox",
              "sh", "-c", "echo exported-content > /marker"))
    exported = {}
    for label, host in targets.items():
        archive = tmp_path / f"{label}.tar"
        ok(docker(host, "export", "-o", str(archive), name))
        exported[label] = archive.read_bytes()
        image = scratch.name("imported")
        ok(docker(host, "import", "-", image, input=exported[label]))
        assert ok(docker(host, "run", "--rm", image, "cat", "/marker")) == b"exported-content\n"
    assert exported["proxy"] == exported["direct"]


# -- objects ------------------------------------------------------------------------------


def test_volumes(targets, scratch):
    name = scratch.name("vol")

    def lifecycle(host: str) -> list[bytes]:
        outputs = [
            ok(docker(host, "volume", "create", "--label", "suite=e2e", name)),
            ok(docker(host, "volume", "ls", "--filter", f"name={name}")),
            ok(docker(host, "volume", "inspect", name)),
            ok(docker(host, "run", "--rm", "-v", f"{name}:/data", "busybox",
                      "sh", "-c", "echo kept > /data/f")),
            ok(docker(host, "run", "--rm", "-v", f"{name}:/data", "busybox", "cat", "/data/f")),
            ok(docker(host, "volume", "rm", name)),
        ]
        assert docker(host, "volume", "inspect", name).returncode == 1
        return outputs

    # The same name both ways, one after the other, so the outputs are directly comparable.
    out = each(targets, lifecycle)
    assert out["direct"][4] == b"kept\n"
    for direct, proxied in zip(out["direct"], out["proxy"], strict=True):
        assert normalise(proxied) == normalise(direct)


def test_networks(targets, scratch):
    name = scratch.name("net")

    def lifecycle(host: str) -> list[bytes]:
        outputs = [
            ok(docker(host, "network", "create", "--label", "suite=e2e", "--subnet",
                      "10.123.0.0/24", name)),
            ok(docker(host, "network", "ls", "--filter", f"name={name}")),
            ok(docker(host, "network", "inspect", name)),
            ok(docker(host, "run", "--rm", "--network", name, "busybox",
                      "sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}'")),
            ok(docker(host, "network", "rm", name)),
        ]
        assert docker(host, "network", "inspect", name).returncode == 1
        return outputs

    out = each(targets, lifecycle)
    assert out["direct"][3].strip().startswith(b"10.123.0.")
    for direct, proxied in zip(out["direct"], out["proxy"], strict=True):
        assert normalise(proxied) == normalise(direct)


def test_stats_no_stream(targets, scratch):
    name = scratch.name("stats")
    running_container(targets["direct"], name)
    named = each(targets, lambda h: ok(docker(h, "stats", "--no-stream", "--format",
                                              "{{.Name}} {{.ID}}", name)))
    assert named["direct"].split()[0] == name.encode()
    assert_same(named, exact=True)
    table = each(targets, lambda h: ok(docker(h, "stats", "--no-stream", name)))
    for text in table.values():
        header, row = text.decode().splitlines()
        assert normalise(header) == normalise(table["direct"].decode().splitlines()[0])
        assert "CPU %" in header and name in row


def test_top(targets, scratch):
    name = scratch.name("top")
    running_container(targets["direct"], name, "sleep 301")
    # Extra arguments are ps options, passed through a query string.
    out = each(targets, lambda h: ok(docker(h, "top", name, "-o", "pid,ppid,user,args")))
    assert out["direct"].split(b"\n")[1].endswith(b"sleep 301")
    assert_same(out, exact=True)
    # The default columns include C, the CPU share, which may drop between the two calls.
    default = each(targets, lambda h: ok(docker(h, "top", name)).split(b"\n"))
    assert default["proxy"][0] == default["direct"][0]
    assert default["proxy"][1].split()[:3] == default["direct"][1].split()[:3]


def test_rename(targets, scratch):
    for host in targets.values():
        before, after = scratch.name("before"), scratch.name("after")
        ok(docker(host, "create", "--name", before, "busybox"))
        ok(docker(host, "rename", before, after))
        assert inspect(host, after, "{{.Name}}") == f"/{after}"
        assert docker(host, "inspect", before).returncode == 1


def test_commit(targets, scratch):
    name = scratch.name("commit-src")
    ok(docker(targets["direct"], "run", "--name", name, "busybox",
              "sh", "-c", "echo committed > /marker"))
    for host in targets.values():
        image = scratch.name("committed")
        image_id = ok(docker(host, "commit", "-m", "from the e2e suite",
                             "-c", 'CMD ["cat", "/marker"]', name, image)).strip()
        assert image_id.startswith(b"sha256:")
        assert ok(docker(host, "run", "--rm", image)) == b"committed\n"
        assert inspect(host, image, "{{.Comment}}") == "from the e2e suite"


def test_pause_unpause(targets, scratch):
    name = scratch.name("pause")
    running_container(targets["direct"], name)
    for host in targets.values():
        assert ok(docker(host, "pause", name)).strip() == name.encode()
        assert inspect(host, name, "{{.State.Status}}") == "paused"
        assert ok(docker(host, "unpause", name)).strip() == name.encode()
        assert inspect(host, name, "{{.State.Status}}") == "running"


def test_kill(targets, scratch):
    for host in targets.values():
        name = scratch.name("kill")
        running_container(host, name)
        assert ok(docker(host, "kill", name)).strip() == name.encode()
        assert ok(docker(host, "wait", name)) == b"137\n"
        # The signal name travels in the query string and must reach the daemon intact.
        trapped = scratch.name("kill-usr1")
        running_container(host, trapped,
                          'trap "echo got-usr1; exit 10" USR1; while :; do sleep 0.1; done')
        ok(docker(host, "kill", "--signal", "USR1", trapped))
        assert ok(docker(host, "wait", trapped)) == b"10\n"
        assert ok(docker(host, "logs", trapped)) == b"got-usr1\n"


@pytest.mark.timeout(120)
def test_concurrent_ps(targets, scratch):
    name = scratch.name("busy")
    running_container(targets["direct"], name)
    args = ["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Image}} {{.Command}}"]
    expected = ok(docker(targets["direct"], *args))
    assert name.encode() in expected
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: docker(targets["proxy"], *args, timeout=90), range(50)))
    failures = [r for r in results if r.returncode != 0 or r.stdout != expected]
    assert not failures, [
        (r.returncode, r.stdout, r.stderr.decode(errors="replace")) for r in failures[:3]]



COMPOSE = shutil.which("docker-compose") or "/usr/bin/docker-compose"
COMPOSE_FILE = """\
version: "2.4"
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo serving; httpd -f -p 8080 -h /etc"]
    labels: {suite: e2e}
  probe:
    image: busybox
    command: ["sh", "-c", "wget -qO- http://web:8080/hostname >/dev/null && echo reached web;
              sleep 300"]
    depends_on: [web]
"""


@pytest.mark.timeout(240)
def test_compose_up_ps_logs_exec_down(targets, scratch, tmp_path):
    """Debian's docker-compose (1.29, on the Engine API through docker-py): a project with a
    network and two services, up, ps, logs, exec and down, the same way direct and through
    the proxy."""
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE)
    project = scratch.name("compose").replace("-", "")

    def compose(host: str, *args: str) -> bytes:
        result = subprocess.run(
            [COMPOSE, "--ansi", "never", "-p", project, *args], capture_output=True, timeout=120,
            cwd=tmp_path, env=docker_env(host, {"COMPOSE_INTERACTIVE_NO_CLI": "1"}),
            stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (args, result.stderr.decode(errors="replace"))
        # Each stream whole: their order against each other is not the program's to keep.
        return result.stdout + b"\n-- stderr --\n" + result.stderr

    def lifecycle(host: str) -> list[bytes]:
        try:
            outputs = [compose(host, "up", "-d")]
            assert wait_for(lambda: b"reached web" in compose(host, "logs", "probe"), 30)
            outputs += [
                compose(host, "ps"),
                compose(host, "logs", "--no-color", "web"),
                compose(host, "exec", "-T", "web", "cat", "/etc/hostname"),
                # Apart in time: the daemon reads the two streams from two pipes, so their order
                # is the container's only when one comes well after the other.
                compose(host, "exec", "-T", "probe", "sh", "-c",
                        "echo out; sleep 0.3; echo err >&2; exit 0"),
            ]
        finally:
            outputs_down = compose(host, "down", "--timeout", "1")
        assert not ok(docker(host, "ps", "-aq", "--filter",
                             f"label=com.docker.compose.project={project}"))
        return [*outputs, outputs_down]

    out = each(targets, lifecycle)
    assert b"serving" in out["direct"][2] and b"out" in out["direct"][4]
    for index in (1, 2, 4):  # ps, logs, exec: the same words both ways
        assert normalise(out["proxy"][index]) == normalise(out["direct"][index]), index
    for index in (0, 5):  # up, down: compose acts on services in parallel, in any order
        assert sorted(normalise(out["proxy"][index]).splitlines()) == \
            sorted(normalise(out["direct"][index]).splitlines()), index
    # exec of `cat /etc/hostname`: a container ID both ways (different containers).
    hostnames = [out[label][3].split(b"\n")[0] for label in ("direct", "proxy")]
    assert all(len(name) == 12 for name in hostnames), hostnames

"""A throwaway Docker Engine for development and the e2e tests.

``Engine(root)`` runs Debian's ``dockerd`` in its own network and mount namespaces, so its bridge,
iptables rules and mounts never touch the host's, with everything it writes kept under ``root``:

    root/docker.sock   the API socket (``Engine.host`` is ``unix://root/docker.sock``)
    root/data/         --data-root (vfs storage: needs no kernel overlay support, but can get big)
    root/exec/         --exec-root
    root/docker.pid    written by dockerd itself
    root/dockerd.log   dockerd's output

No registry is reachable where this runs, so ``ensure_image`` makes ``busybox:latest`` from the
host's static busybox binary instead of pulling it.

From a shell::

    eval "$(python -m powerstrip_dev.engine start --root /tmp/ps-engine)"
    python -m powerstrip_dev.engine stop --root /tmp/ps-engine [--remove]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

PACKAGES = ("docker.io", "busybox-static")
BUSYBOX = Path("/bin/busybox")
DEFAULT_ROOT = "/tmp/powerstrip-engine"
STOP_GRACE = 10.0
LOG_TAIL_LINES = 40

# Runs inside the new namespaces: a fresh network namespace has its loopback down, and dockerd
# (and containers publishing ports) expect it up. ``exec`` keeps one PID from unshare to dockerd,
# so the Popen PID, dockerd's pidfile and the process group leader are all the same process.
# With PS_PLUGIN_DIR, the engine's own mount namespace sees that directory as
# /run/docker/plugins, where dockerd finds plugins by name: each engine has its own plugins, and
# a test's plugin never answers another engine.
# With PS_HOSTNAME (an engine in a named network namespace, playing a host), the engine gets that
# host name (Swarm names its node after it) and a private /var/run/docker: libnetwork keeps its
# overlay sandboxes there whatever --exec-root says, and two engines sharing it break each
# other's overlay networks.
_INNER_SCRIPT = (
    'ip link set lo up && '
    'if [ -n "$PS_HOSTNAME" ]; then hostname "$PS_HOSTNAME" && mkdir -p /var/run/docker && '
    'mount -t tmpfs tmpfs /var/run/docker; fi && '
    'if [ -n "$PS_PLUGIN_DIR" ]; then mkdir -p /run/docker/plugins && '
    'mount --bind "$PS_PLUGIN_DIR" /run/docker/plugins; fi && '
    'exec dockerd "$@"'
)


class ThrowawayEngineError(RuntimeError):
    """The throwaway engine could not be installed, started, stopped or provisioned; the message
    says why. Not ``powerstrip.kit.engine_api.EngineError``, which is an Engine API answer."""


def ensure_packages() -> None:
    """Install ``docker.io`` and ``busybox-static`` with apt when ``dockerd`` or busybox is missing.

    Also installs the small tools ``Engine.start`` uses (``unshare``, ``ip``) if a minimal image
    lacks them. Does nothing when everything is present. Needs root when it has work to do.
    """
    need: list[str] = []
    if shutil.which("dockerd", path=_sbin_path()) is None:
        need.append("docker.io")
    if not BUSYBOX.exists():
        need.append("busybox-static")
    if shutil.which("unshare", path=_sbin_path()) is None:
        need.append("util-linux")
    if shutil.which("ip", path=_sbin_path()) is None:
        need.append("iproute2")
    if not need:
        return
    if os.geteuid() != 0:
        raise ThrowawayEngineError(
            f"need root to install {' '.join(need)} (or install them yourself)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", *need],
    ):
        try:
            result = subprocess.run(
                command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, check=False,
            )
        except OSError as exc:
            raise ThrowawayEngineError(f"cannot run {' '.join(command)}: {exc}") from None
        if result.returncode != 0:
            output = result.stdout.decode(errors="replace")
            raise ThrowawayEngineError(
                f"{' '.join(command)} failed with exit status {result.returncode}:\n{output}"
            )


def daemon_reachable(host: str, timeout: float = 2.0) -> bool:
    """Whether a Docker daemon answers ``GET /_ping`` with ``200 OK`` at ``host``.

    ``host`` is spelled as in ``DOCKER_HOST``: ``unix:///path`` or ``tcp://HOST:PORT``.
    Raises ``ValueError`` for any other spelling.
    """
    try:
        status, body = _request(host, "GET", "/_ping", timeout=timeout)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200 and body.strip() == b"OK"


class Engine:
    """A dockerd whose state all lives under one directory; see the module docstring."""

    def __init__(self, root: str | Path, *, args: Sequence[str] = (),
                 plugin_dir: str | Path | None = None, netns: str | None = None,
                 hostname: str | None = None) -> None:
        """``args`` are added to dockerd's command line (``--authorization-plugin=NAME``);
        ``plugin_dir`` is the directory the engine sees as ``/run/docker/plugins``.

        ``netns`` names a network namespace (``/run/netns/NAME``, from ``ip netns add``) to run
        the engine in, in place of a new one of its own; ``hostname`` is the host name it
        sees. Together they make an engine one host of a rig of several
        (``powerstrip_dev.fabric``)."""
        self.root = Path(root).absolute()
        self.netns = netns
        self.hostname = hostname
        self.args = tuple(args)
        self.plugin_dir = None if plugin_dir is None else Path(plugin_dir).absolute()
        self.socket_path = self.root / "docker.sock"
        self.host = f"unix://{self.socket_path}"
        self.data_root = self.root / "data"
        self.exec_root = self.root / "exec"
        self.pidfile = self.root / "docker.pid"
        self.logfile = self.root / "dockerd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"Engine({str(self.root)!r})"

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start dockerd and wait until it answers ``/_ping``.

        dockerd runs in its own session (so it outlives the calling command and can be signalled
        as a group) and its own network and mount namespaces. A pidfile or socket left by a dead
        earlier run in the same root is removed first; a live one is an error.
        """
        # The kernel caps unix socket paths at 108 bytes including the terminator.
        if len(os.fsencode(self.socket_path)) > 107:
            raise ThrowawayEngineError(
                f"socket path too long for a unix socket: {self.socket_path}")
        live = self.pid()
        if live is not None:
            raise ThrowawayEngineError(f"an engine is already running in {self.root} (pid {live})")
        self._clean_stale()
        try:
            for path in (self.root, self.data_root, self.exec_root):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ThrowawayEngineError(f"cannot create {self.root}: {exc}") from None
        unshare = shutil.which("unshare", path=_sbin_path())
        if unshare is None or shutil.which("dockerd", path=_sbin_path()) is None:
            raise ThrowawayEngineError("unshare or dockerd not found; run ensure_packages() first")
        if self.netns is None:
            namespaces = [unshare, "--net", "--mount"]
        else:
            # `ip netns exec` would remount /sys, where dockerd then misses the devices cgroup.
            nsenter = shutil.which("nsenter", path=_sbin_path()) or "nsenter"
            namespaces = [nsenter, f"--net=/run/netns/{self.netns}", unshare, "--mount"]
        if self.hostname is not None:
            namespaces.append("--uts")
        command = [
            *namespaces, "--propagation", "slave",
            "sh", "-c", _INNER_SCRIPT, "sh",
            "--host", self.host,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pidfile),
            "--storage-driver", "vfs",
            "--shutdown-timeout", "2",
            *self.args,
        ]
        env = {**os.environ, "PATH": _sbin_path(), "PS_PLUGIN_DIR": "",
               "PS_HOSTNAME": self.hostname or ""}
        if self.plugin_dir is not None:
            self.plugin_dir.mkdir(parents=True, exist_ok=True)
            env["PS_PLUGIN_DIR"] = str(self.plugin_dir)
        for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(name, None)
        with open(self.logfile, "ab") as logfile:
            logfile.write(f"--- engine start {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n".encode())
            logfile.flush()
            try:
                self._proc = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT,
                    env=env, cwd=self.root, start_new_session=True,
                )
            except OSError as exc:
                raise ThrowawayEngineError(f"cannot run {unshare}: {exc}") from None
        try:
            self.wait_ready(timeout)
        except ThrowawayEngineError:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the running dockerd answers ``/_ping``; ``ThrowawayEngineError`` if it
        dies or is late."""
        deadline = time.monotonic() + timeout
        while True:
            if daemon_reachable(self.host, timeout=1.0):
                return
            if self.pid() is None:
                code = self._proc.poll() if self._proc is not None else None
                raise ThrowawayEngineError(
                    f"dockerd exited (status {code}) before answering /_ping\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ThrowawayEngineError(
                    f"dockerd did not answer /_ping within {timeout:g} s\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, remove: bool = False) -> None:
        """Remove every container, stop dockerd, and with ``remove`` delete the whole root.

        dockerd gets SIGTERM and ``STOP_GRACE`` seconds; after that its process group and every
        process it started are killed. Calling this on a stopped engine only tidies up.
        """
        pid = self.pid()
        if pid is not None:
            if daemon_reachable(self.host):
                self._remove_containers()
            # containerd and the shims run in sessions of their own, so the process group alone
            # would miss them if dockerd has to be killed; remember them all now.
            tree = _descendants(pid) | self._strays()
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not self._wait_exit(pid, STOP_GRACE):
                log.warning("dockerd (pid %d) outlived SIGTERM; killing it", pid)
                tree |= _descendants(pid) | self._strays()
                try:
                    if os.getpgid(pid) == pid:
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if not self._wait_exit(pid, 5.0):
                    raise ThrowawayEngineError(f"dockerd (pid {pid}) survived SIGKILL")
            for leftover in tree:
                leftover.kill()
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        # Shims of a dockerd that died without cleaning up outlive it, holding containers.
        for leftover in self._strays():
            leftover.kill()
        self._clean_stale()
        if remove and self.root.exists():
            mounted = [m for m in _mount_points() if m == self.root or self.root in m.parents]
            if mounted:
                raise ThrowawayEngineError(
                    f"not deleting {self.root}: still mounted there: "
                    + ", ".join(str(m) for m in mounted)
                )
            try:
                shutil.rmtree(self.root)
            except OSError as exc:
                raise ThrowawayEngineError(f"cannot delete {self.root}: {exc}") from None

    def pid(self) -> int | None:
        """The PID of this root's dockerd if it is running, else None."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of dockerd.log, for error messages."""
        try:
            text = self.logfile.read_bytes().decode(errors="replace")
        except OSError as exc:
            return f"(no dockerd log: {exc})"
        tail = text.splitlines()[-lines:]
        return f"last {len(tail)} lines of {self.logfile}:\n" + "\n".join(tail)

    # -- images ----------------------------------------------------------------------------

    def ensure_image(self, name: str = "busybox:latest") -> None:
        """Import a busybox image under ``name`` unless the engine already has one by that name.

        The image holds the host's static ``/bin/busybox`` with a symlink in ``/bin`` for every
        applet, minimal ``/etc/passwd`` and ``/etc/group`` and a writable ``/tmp``; its command
        is ``sh`` as in the Docker Hub image.
        """
        quoted = urllib.parse.quote(name, safe="")
        status, body = self._api("GET", f"/images/{quoted}/json")
        if status == 200:
            return
        if status != 404:
            raise ThrowawayEngineError(f"cannot inspect image {name}: {status} {body[:500]!r}")
        repo, tag = _split_reference(name)
        query = urllib.parse.urlencode(
            {"fromSrc": "-", "repo": repo, "tag": tag, "changes": 'CMD ["sh"]'}
        )
        status, body = self._api(
            "POST", f"/images/create?{query}", body=busybox_rootfs_tar(),
            headers={"Content-Type": "application/x-tar"}, timeout=120.0,
        )
        # Import reports failure inside a 200 progress stream, so look at the messages too.
        errors = [m["error"] for m in _json_messages(body) if isinstance(m, dict) and "error" in m]
        if status != 200 or errors:
            raise ThrowawayEngineError(
                f"importing {name} failed: {status} {errors or body[:500]!r}")

    # -- internals -------------------------------------------------------------------------

    def _api(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, bytes]:
        try:
            return _request(self.host, method, path, body, headers, timeout)
        except (OSError, http.client.HTTPException) as exc:
            raise ThrowawayEngineError(f"{method} {path} on {self.host} failed: {exc}") from None

    def _remove_containers(self) -> None:
        try:
            status, body = self._api("GET", "/containers/json?all=1")
            ids = [c["Id"] for c in json.loads(body)] if status == 200 else []
        except (ThrowawayEngineError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot list containers before stopping: %s", exc)
            return
        for container_id in ids:
            try:
                status, body = self._api(
                    "DELETE", f"/containers/{container_id}?force=1&v=1", timeout=60.0
                )
            except ThrowawayEngineError as exc:
                log.warning("%s", exc)
                continue
            if status not in (204, 404):
                log.warning("removing container %s: %d %r", container_id[:12], status, body)

    def _is_ours(self, pid: int) -> bool:
        # A PID from a stale pidfile may since belong to anything; only a process started for
        # this root carries its socket path on the command line.
        cmdline = _cmdline(pid)
        return (
            cmdline is not None
            and _state(pid) not in (None, "Z")
            and f"unix://{self.socket_path}" in cmdline
        )

    def _strays(self) -> set[_Process]:
        # containerd-shim daemonizes (its parent becomes init), so it is no descendant of dockerd.
        # containerd (--config) and the shims (-address) name this root's containerd files on
        # their command lines, which no other engine shares; their children are the containers.
        marker = f"{self.exec_root}/containerd/containerd."
        found: set[_Process] = set()
        for process in _all_processes():
            cmdline = _cmdline(process.pid)
            if cmdline is not None and marker in cmdline:
                found.add(process)
                found |= _descendants(process.pid)
        return found

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    return True
            elif _state(pid) in (None, "Z"):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _clean_stale(self) -> None:
        if self.pid() is not None:
            return
        for path in (self.pidfile, self.socket_path):
            path.unlink(missing_ok=True)
        # dockerd adopts a containerd whose pidfile names a live process, whatever it is.
        containerd_pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(containerd_pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        cmdline = _cmdline(pid)
        if cmdline is None or str(self.exec_root) not in cmdline:
            containerd_pidfile.unlink(missing_ok=True)


def busybox_rootfs_tar() -> bytes:
    """A tar of a minimal root filesystem around the host's static busybox."""
    if not BUSYBOX.exists():
        raise ThrowawayEngineError(f"{BUSYBOX} not found; run ensure_packages() first")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, check=True
    ).stdout.decode().split()
    now = int(time.time())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", target: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, now
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.linkname = target
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for directory in ("bin", "dev", "etc", "home", "proc", "sys", "usr", "usr/bin",
                          "usr/sbin", "sbin", "var", "var/spool", "var/www"):
            add(directory, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("root", tarfile.DIRTYPE, 0o700)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in applets:
            if applet != "busybox" and "/" not in applet:
                add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, target="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnobody:x:65534:\n")
    return buffer.getvalue()


# -- HTTP over the Docker socket -----------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _connection(host: str, timeout: float) -> http.client.HTTPConnection:
    if host.startswith("unix://"):
        return _UnixConnection(host[len("unix://"):], timeout)
    if host.startswith(("tcp://", "http://")):
        parts = urllib.parse.urlsplit(host)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"expected tcp://HOST:PORT, got {host!r}")
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    raise ValueError(f"unsupported Docker host {host!r}: use unix:///path or tcp://HOST:PORT")


def _request(
    host: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    connection = _connection(host, timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _json_messages(body: bytes) -> list[object]:
    decoder = json.JSONDecoder()
    text = body.decode(errors="replace")
    messages, index = [], 0
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        try:
            message, index = decoder.raw_decode(text, index)
        except ValueError:
            break
        messages.append(message)
    return messages


def _split_reference(name: str) -> tuple[str, str]:
    repo, sep, tag = name.rpartition(":")
    # A colon before the last slash is a registry port, not a tag.
    if not sep or "/" in tag:
        return name, "latest"
    return repo, tag


# -- processes -----------------------------------------------------------------------------


def _sbin_path() -> str:
    # dockerd, ip and the runtimes live in sbin directories a non-login PATH may lack.
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if extra not in parts:
            parts.append(extra)
    return os.pathsep.join(p for p in parts if p)


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace"
        )
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is parenthesised and may itself contain spaces and parentheses.
    return text[text.rindex(")") + 2:].split()


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


class _Process:
    """A PID pinned to its start time, so a reused PID is never signalled by mistake."""

    def __init__(self, pid: int, start: str) -> None:
        self.pid, self.start = pid, start

    def __hash__(self) -> int:
        return hash((self.pid, self.start))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Process) and (self.pid, self.start) == (other.pid, other.start)

    def kill(self) -> None:
        fields = _stat_fields(self.pid)
        if fields is None or fields[19] != self.start or fields[0] == "Z":
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _process_table() -> dict[int, tuple[int, str]]:
    """PID to (parent PID, start time) for every process visible in /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                table[int(entry)] = (int(fields[1]), fields[19])
    return table


def _all_processes() -> list[_Process]:
    return [_Process(pid, start) for pid, (_, start) in _process_table().items()]


def _descendants(pid: int) -> set[_Process]:
    table = _process_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found: set[_Process] = set()
    pending = list(children.get(pid, []))
    while pending:
        child = pending.pop()
        found.add(_Process(child, table[child][1]))
        pending.extend(children.get(child, []))
    return found


def _mount_points() -> list[Path]:
    points = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return points
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            # mountinfo escapes spaces and similar as octal.
            points.append(Path(fields[4].encode().decode("unicode_escape")))
    return points


# -- command line --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m powerstrip_dev.engine start|stop --root DIR``.

    ``start`` installs what is missing, starts the engine detached (it keeps running after this
    command exits), imports busybox and prints ``export DOCKER_HOST=...``; it is a no-op apart from
    the print when the engine is already up. ``stop`` removes all containers and stops dockerd;
    ``--remove`` also deletes the root directory.
    """
    parser = argparse.ArgumentParser(prog="python -m powerstrip_dev.engine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"state directory ({DEFAULT_ROOT})")
    parser.add_argument("--timeout", type=float, default=30.0, help="start timeout in seconds")
    parser.add_argument("--remove", action="store_true", help="stop: delete the root as well")
    args = parser.parse_args(argv)
    engine = Engine(args.root)
    try:
        if args.action == "start":
            ensure_packages()
            if engine.pid() is None:
                engine.start(timeout=args.timeout)
            else:
                engine.wait_ready(timeout=args.timeout)
            engine.ensure_image()
            print(f"export DOCKER_HOST={engine.host}", flush=True)
        else:
            engine.stop(remove=args.remove)
    except ThrowawayEngineError as exc:
        print(f"powerstrip engine: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

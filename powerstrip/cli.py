"""The ``powerstrip`` command line."""

from __future__ import annotations

import argparse
import errno
import gc
import grp
import ipaddress
import logging
import os
import resource
import signal
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from powerstrip.proxy.addresses import (
    LISTEN_BACKLOG,
    Address,
    AddressError,
    parse_address,
    server_description,
)
from powerstrip.proxy.limits import Limits
from powerstrip.proxy.tls import ServerTLS, TLSFileError

log = logging.getLogger("powerstrip")

DEFAULT_LISTEN = "tcp://127.0.0.1:2375"
DEFAULT_UPSTREAM = "unix:///var/run/docker.sock"
DEFAULT_CONFIGS = ("./powerstrip.yml", "/etc/powerstrip/adapters.yml")
DEFAULT_BUSY_POLL = "200"
DEFAULT_TRACE_SIZE = 200
DEFAULT_TRACE_BODY = 4096
#: A spin longer than this is no longer a wait for an answer in flight, only burnt CPU.
LONGEST_BUSY_POLL = 10_000
SHUTDOWN_GRACE = 5.0
#: The entry-point group through which other packages add subcommands: ``NAME = module:main``,
#: where ``main(argv) -> int`` parses its own arguments. The development package
#: ``powerstrip_dev`` adds ``engine``, ``run`` and ``demo`` this way, so that this module never
#: imports it: it installs packages and starts daemons, which the proxy must never do.
COMMANDS_GROUP = "powerstrip.commands"
#: The subcommands defined here, which an entry point cannot replace.
BUILTIN_COMMANDS = ("serve", "check", "trace")


class UsageError(Exception):
    """A command-line or environment setting that cannot be used; the message says why."""


def docker_host_line(address: Address, bound: object, tls: ServerTLS | None = None) -> str:
    """What a docker client needs to reach the listener ``address``, now bound at ``bound``
    (the port's ``getHost()``), as shell assignments: ``DOCKER_HOST=...``, and for a TLS
    listener (``ssl:``, or ``tcp://`` with ``--tls`` or ``--tlsverify``), which the CLI
    otherwise speaks plain HTTP to, ``DOCKER_TLS_VERIFY=1``: the CLI verifies the proxy's
    certificate against ``DOCKER_CERT_PATH/ca.pem`` and shows its own from there if it has
    one. ``DOCKER_TLS=1`` (``docker --tls``) would skip that verification, yet the CLI still
    wants a ``ca.pem`` there, so it is no easier. Port 0 and Twisted descriptions are named by
    what was actually bound."""
    if isinstance(bound, IPv4Address | IPv6Address):
        host = address.host if address.kind == "tcp" else bound.host
        line = f"DOCKER_HOST={Address('tcp', host=host, port=bound.port).docker_host}"
        if address.kind == "endpoint" and address.description.startswith("ssl:"):
            line += " DOCKER_TLS_VERIFY=1"
        elif address.kind == "tcp" and tls is not None:
            line += " DOCKER_TLS_VERIFY=1"
        return line
    if isinstance(bound, UNIXAddress) and bound.name:
        name = bound.name.decode() if isinstance(bound.name, bytes) else bound.name
        return f"DOCKER_HOST=unix://{name}"
    return f"DOCKER_HOST={address.docker_host}"


def resolve_config(explicit: str | None) -> Path | None:
    """The configuration file to use: the one given, else the first default that exists.

    No file at all means "no hooks", which is not an error; a file named explicitly must exist.
    """
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise UsageError(f"configuration file {explicit} does not exist")
        return path
    for candidate in DEFAULT_CONFIGS:
        path = Path(candidate)
        if path.exists():
            return path
    return None


def prepare_unix_socket(path: str) -> None:
    """Make way for a unix listener at ``path``.

    A socket file left by a dead process is removed; one that still answers belongs to a live
    process and is refused rather than stolen.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UsageError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise UsageError(f"cannot check socket {path}: {exc}") from None
    else:
        raise UsageError(f"another process is already listening on {path}")
    finally:
        probe.close()


def _addresses(values: Sequence[str], what: str) -> list[Address]:
    try:
        return [parse_address(value) for value in values]
    except AddressError as exc:
        raise UsageError(f"{what}: {exc}") from None


def busy_poll_seconds(value: str) -> float:
    """The ``--busy-poll`` setting (whole microseconds) in seconds."""
    micros = int(value) if value.isascii() and value.isdigit() else -1
    if not 0 <= micros <= LONGEST_BUSY_POLL:
        raise UsageError(
            f"--busy-poll: {value!r} is not a number of microseconds from 0 to {LONGEST_BUSY_POLL}"
        )
    return micros / 1e6


def _setting(value: str | None, env: str, default: str, flag: str, *, whole: bool) -> float:
    """A non-negative number from the flag, else the environment, else the default."""
    text = value if value is not None else os.environ.get(env) or default
    try:
        number = int(text) if whole else float(text)
    except ValueError:
        number = -1
    if not 0 <= number < float("inf"):
        kind = "whole number" if whole else "number of seconds"
        raise UsageError(f"{flag}: {text!r} is not a {kind} of 0 or more")
    return number


def limits_from(args: argparse.Namespace) -> Limits:
    """The ``--head-timeout``, ``--idle-timeout`` and ``--max-connections`` settings."""
    return Limits(
        head_timeout=_setting(args.head_timeout, "POWERSTRIP_HEAD_TIMEOUT",
                              str(Limits.head_timeout), "--head-timeout", whole=False),
        idle_timeout=_setting(args.idle_timeout, "POWERSTRIP_IDLE_TIMEOUT",
                              str(Limits.idle_timeout), "--idle-timeout", whole=False),
        max_connections=int(_setting(args.max_connections, "POWERSTRIP_MAX_CONNECTIONS",
                                     str(Limits.max_connections), "--max-connections",
                                     whole=True)),
    )


#: Descriptors beyond three per client connection: listeners, the log, the adapters file, and
#: the idle connections kept to adapters (up to 128 per adapter, hooks.client).
DESCRIPTOR_SLACK = 1024


def descriptors_wanted(max_connections: int) -> int | None:
    """The descriptors ``--max-connections`` can take: each client connection holds its own, the
    daemon's and, while a hook call is in flight, one to an adapter. None: no limit given."""
    return 3 * max_connections + DESCRIPTOR_SLACK if max_connections else None


def _enough_descriptors(limits: Limits) -> None:
    """Raise the soft limit towards the hard one so that ``--max-connections`` can be reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = descriptors_wanted(limits.max_connections) or hard
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if limits.max_connections and wanted < 2 * limits.max_connections + 64:
        log.warning("only %d file descriptors: fewer than --max-connections %d needs",
                    wanted, limits.max_connections)


def workers_from(args: argparse.Namespace) -> int:
    """The ``--workers`` setting: how many processes serve (1: this one alone)."""
    count = int(_setting(args.workers, "POWERSTRIP_WORKERS", "1", "--workers", whole=True))
    if count < 1:
        raise UsageError("--workers: 0 is not a number of processes; at least 1")
    return count


INSECURE_FLAG = "--insecure-allow-unauthenticated"


def _enabled(flag: bool, env: str) -> bool:
    """A switch: the flag, else a non-empty environment value other than 0, false or no."""
    return flag or os.environ.get(env, "").strip().lower() not in ("", "0", "false", "no")


def tls_from(args: argparse.Namespace) -> ServerTLS | None:
    """The ``--tls``/``--tlsverify`` settings (or their ``POWERSTRIP_`` variables) of the
    ``tcp://`` listeners, with their files read once to be sure they can be used; None: plain.
    ``--tlsverify`` implies ``--tls``, as for dockerd."""
    verify = _enabled(args.tlsverify, "POWERSTRIP_TLSVERIFY")
    enabled = verify or _enabled(args.tls, "POWERSTRIP_TLS")
    files = {
        "--tlscacert": args.tlscacert or os.environ.get("POWERSTRIP_TLSCACERT") or None,
        "--tlscert": args.tlscert or os.environ.get("POWERSTRIP_TLSCERT") or None,
        "--tlskey": args.tlskey or os.environ.get("POWERSTRIP_TLSKEY") or None,
    }
    if not enabled:
        given = [flag for flag, value in files.items() if value]
        if given:
            # A certificate given without TLS asked for would leave the listener plain while
            # its owner believes it encrypted.
            raise UsageError(f"{', '.join(given)} without --tls or --tlsverify: the tcp:// "
                             "listeners would not use TLS; add --tlsverify (or --tls)")
        return None
    missing = [flag for flag in ("--tlscert", "--tlskey") if not files[flag]]
    if verify and not files["--tlscacert"]:
        missing.append("--tlscacert")
    if missing:
        mode = "--tlsverify" if verify else "--tls"
        raise UsageError(f"{mode} needs {', '.join(missing)}")
    settings = ServerTLS(cert=files["--tlscert"], key=files["--tlskey"],
                         ca=files["--tlscacert"] if verify else None, verify=verify)
    try:
        settings.options()
    except TLSFileError as exc:
        raise UsageError(str(exc)) from None
    return settings


def is_loopback(host: str) -> bool:
    """Whether a listener bound to ``host`` is reachable from this host only: a loopback
    address, or a name all of whose addresses are. An empty host is the default, 127.0.0.1;
    0.0.0.0 and :: are every interface."""
    if not host:
        return True
    try:
        return _loopback_ip(host)
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(found) and all(_loopback_ip(str(item[4][0]).split("%")[0]) for item in found)


def _loopback_ip(text: str) -> bool:
    ip = ipaddress.ip_address(text.strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def listener_transport(address: Address, tls: ServerTLS | None) -> str | None:
    """How the listener ``address`` lets clients in: ``unix`` (by the socket file's
    permissions), ``tcp`` (anyone who reaches it), ``tls`` (encrypted, anyone who reaches it)
    or ``tlsverify`` (a client certificate the authority signed); None: a Twisted description
    known only once bound (``systemd:``)."""
    if address.kind == "unix":
        return "unix"
    if address.kind == "tcp":
        if tls is None:
            return "tcp"
        return "tlsverify" if tls.verify else "tls"
    kind = address.description.split(":", 1)[0]
    return {"unix": "unix", "tcp": "tcp", "tcp6": "tcp", "ssl": "tls"}.get(kind)


def guard_listener(name: str, transport: str, host: str, insecure: bool) -> str | None:
    """Whether the listener ``name`` (its ``transport`` as ``listener_transport`` says, bound
    to ``host``) may start: None, silently; a warning to log; or ``UsageError`` when it would
    let clients in unauthenticated from beyond this host and ``insecure`` was not given."""
    if transport in ("unix", "tlsverify"):
        return None
    if not is_loopback(host):
        if not insecure:
            raise UsageError(
                f"--listen {name}: anyone who can reach {_where(host)} would get the Docker "
                "daemon's power (root on this host) without authenticating; use --tlsverify "
                "with client certificates, a unix:// listener or a loopback address, or give "
                f"{INSECURE_FLAG} to start anyway"
            )
        return (f"{name} lets in, unauthenticated, anyone who can reach it, with the Docker "
                f"daemon's power (root on this host): {INSECURE_FLAG} was given")
    return (f"{name} lets in every local user, with the Docker daemon's power (root on this "
            "host), past the permissions of its socket; a unix:// listener with "
            "--socket-group, or --tlsverify, authenticates clients")


def _where(host: str) -> str:
    try:
        if ipaddress.ip_address(host.strip("[]")).is_unspecified:
            return f"any address of this host ({host})"
    except ValueError:
        pass
    return host


def _bound_transport(address: Address, bound: object) -> tuple[str, str]:
    """The transport and host of a Twisted description's listener, from what it bound."""
    if isinstance(bound, IPv4Address | IPv6Address):
        return (listener_transport(address, None) or "tcp"), bound.host
    return "unix", ""


def serve(args: argparse.Namespace) -> int:
    """Run the proxy until SIGTERM or SIGINT."""
    limits = limits_from(args)
    busy_poll = busy_poll_seconds(
        args.busy_poll if args.busy_poll is not None
        else os.environ.get("POWERSTRIP_BUSY_POLL") or DEFAULT_BUSY_POLL
    )
    worker_fds = _worker_fds(args)
    workers = 1 if worker_fds is not None else workers_from(args)
    listen_values = args.listen or [
        item for item in os.environ.get("POWERSTRIP_LISTEN", DEFAULT_LISTEN).split(",") if item
    ]
    listens = _addresses(listen_values, "--listen")
    tls = tls_from(args)
    if tls is not None and not any(address.kind == "tcp" for address in listens):
        raise UsageError("--tls/--tlsverify apply to tcp:// listeners, and there is none")
    upstream_value = args.upstream or os.environ.get("POWERSTRIP_UPSTREAM", DEFAULT_UPSTREAM)
    (upstream,) = _addresses([upstream_value], "--upstream")
    if worker_fds is not None and len(worker_fds) != len(listens):
        raise UsageError("--worker-fds: one descriptor for each --listen")
    config_path = resolve_config(args.config or os.environ.get("POWERSTRIP_CONFIG"))
    group_id = None
    if args.socket_group:
        try:
            group_id = grp.getgrnam(args.socket_group).gr_gid
        except KeyError:
            raise UsageError(f"--socket-group: no group named {args.socket_group}") from None
    if worker_fds is None:  # a worker's parent has checked its listeners
        for address in listens:
            transport = listener_transport(address, tls)
            if address.kind != "endpoint" and transport is not None:
                warning = guard_listener(str(address), transport, address.host,
                                         args.insecure_allow_unauthenticated)
                if warning:
                    log.warning("%s", warning)
    admin_value = args.admin or os.environ.get("POWERSTRIP_ADMIN") or None
    admin = _addresses([admin_value], "--admin")[0] if admin_value else None
    audit_path = args.audit_log or os.environ.get("POWERSTRIP_AUDIT_LOG") or None
    trace_size = int(_setting(args.trace_size, "POWERSTRIP_TRACE_SIZE", str(DEFAULT_TRACE_SIZE),
                              "--trace-size", whole=True))
    trace_body = int(_setting(args.trace_body, "POWERSTRIP_TRACE_BODY", str(DEFAULT_TRACE_BODY),
                              "--trace-body", whole=True))
    if admin is not None and worker_fds is None:
        transport = listener_transport(admin, tls)
        if admin.kind != "endpoint" and transport is not None:
            # Refused beyond loopback as the API listeners are; on loopback it gives no power
            # over the daemon, so there is nothing to warn of.
            guard_listener(f"(--admin) {admin}", transport, admin.host,
                           args.insecure_allow_unauthenticated)
    if workers > 1:
        if admin is not None:
            raise UsageError(f"--workers {workers}: the admin listener shows one process's "
                             "numbers and trace; serve it with --workers 1")
        return _supervise(args, workers, listens, listen_values, upstream_value, config_path,
                          limits, busy_poll, group_id, tls, audit_path)

    if "twisted.internet.reactor" not in sys.modules:
        from powerstrip.proxy.reactor import install

        install(busy_poll)
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import serverFromString

    from powerstrip.hooks.config import ConfigError
    from powerstrip.hooks.live import LiveConfig, describe
    from powerstrip.proxy.connection import ProxyFactory
    from powerstrip.proxy.tls import allow_half_close, tls_server_endpoint
    from powerstrip.proxy.workers import adopt, say_ready

    try:
        hooks = LiveConfig.from_file(reactor, config_path)
    except ConfigError as exc:
        raise UsageError(f"invalid configuration, not starting:\n{exc}") from None
    log.info("configuration: %s (%d endpoints, %d adapters)", describe(config_path),
             len(hooks.config.endpoints), len(hooks.config.adapters))
    if worker_fds is None:
        for address in listens:
            if address.kind == "unix":
                prepare_unix_socket(address.path)

    _enough_descriptors(limits)
    observer = None
    if admin is not None or audit_path is not None:
        from powerstrip.observe.audit import AuditLog
        from powerstrip.observe.observer import Observer
        from powerstrip.observe.stats import Stats
        from powerstrip.observe.trace import Trace

        stats = Stats()
        try:
            audit = AuditLog(audit_path, stats) if audit_path is not None else None
        except OSError as exc:
            raise UsageError(f"--audit-log: cannot open {audit_path}: {exc}") from None
        trace = Trace(trace_size, trace_body) if admin is not None and trace_size else None
        observer = Observer(stats, audit, trace)
    factory = ProxyFactory(reactor, upstream, hooks, limits, observer)
    ports: list = []
    exit_code = [0]

    @defer.inlineCallbacks
    def start() -> defer.Generator:
        try:
            for index, address in enumerate(listens):
                if worker_fds is not None:  # the parent bound it, and set its file's group
                    port = adopt(reactor, worker_fds[index], factory,
                                 tls=tls if address.kind == "tcp" else None)
                    os.close(worker_fds[index])
                elif address.kind == "tcp" and tls is not None:
                    port = yield tls_server_endpoint(
                        reactor, address.port, address.host or "127.0.0.1", LISTEN_BACKLOG,
                        tls).listen(factory)
                else:
                    port = yield serverFromString(
                        reactor, server_description(address)).listen(factory)
                allow_half_close(port)
                ports.append(port)
                if address.kind == "endpoint" and worker_fds is None:
                    # Where a description listens is known for sure only once it is bound.
                    transport, host = _bound_transport(address, port.getHost())
                    try:
                        warning = guard_listener(str(address), transport, host,
                                                 args.insecure_allow_unauthenticated)
                    except UsageError as exc:
                        print(f"powerstrip: {exc}", file=sys.stderr, flush=True)
                        exit_code[0] = 2
                        reactor.stop()
                        return
                    if warning:
                        log.warning("%s", warning)
                if address.kind == "unix" and group_id is not None and worker_fds is None:
                    os.chown(address.path, -1, group_id)
        except Exception as exc:  # noqa: BLE001 - any listen failure ends the command
            print(f"powerstrip: cannot listen: {exc}", file=sys.stderr, flush=True)
            exit_code[0] = 1
            reactor.stop()
            return
        if admin is not None:
            try:
                admin_port = yield _listen_admin(reactor, admin, tls, observer, upstream, hooks)
            except Exception as exc:  # noqa: BLE001 - like any listener's failure
                print(f"powerstrip: cannot listen (--admin): {exc}", file=sys.stderr, flush=True)
                exit_code[0] = 1
                reactor.stop()
                return
            ports.append(admin_port)
            log.info("admin listener: %s (/metrics, /healthz, /readyz, /trace)",
                     _admin_url(admin, admin_port.getHost(), tls))
        log.info("forwarding to %s", upstream)
        hooks.watch()
        # What exists now (modules, Twisted, the configuration, the listeners) lives as long
        # as the process, yet every full collection would walk it again. In bursts of
        # connections a full collection stalled every open connection for about 21 ms; with
        # this frozen, 13 ms (docs/performance.md, "Bursts of connections").
        gc.collect()
        gc.freeze()
        if observer is not None and observer.audit is not None:
            _reopen_on_sighup(reactor, observer.audit)
        if args.ready_fd is not None:
            say_ready(args.ready_fd)
        else:
            print(f"export {docker_host_line(listens[0], ports[0].getHost(), tls)}", flush=True)

    @defer.inlineCallbacks
    def stop() -> defer.Generator:
        for port in ports:
            yield port.stopListening()
        yield factory.shutdown(SHUTDOWN_GRACE)
        hooks.stop()

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    # A shell starting us in the background (``powerstrip serve &``) passes SIGINT on ignored,
    # and Twisted only takes over SIGINT from Python's default handler: restore that, so
    # ``kill -INT`` stops the proxy gracefully however it was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    reactor.run()
    return exit_code[0]


def _listen_admin(reactor: object, admin: Address, tls: ServerTLS | None, observer: object,
                  upstream: Address, hooks: object) -> object:
    """Start the admin listener; a Deferred firing with its port."""
    from twisted.internet.endpoints import serverFromString

    from powerstrip.proxy.admin import admin_site
    from powerstrip.proxy.tls import tls_server_endpoint

    site = admin_site(reactor, observer, upstream, hooks)
    if admin.kind == "unix":
        prepare_unix_socket(admin.path)
    if admin.kind == "tcp" and tls is not None:
        return tls_server_endpoint(reactor, admin.port, admin.host or "127.0.0.1",
                                   LISTEN_BACKLOG, tls).listen(site)
    return serverFromString(reactor, server_description(admin)).listen(site)


def _admin_url(admin: Address, bound: object, tls: ServerTLS | None) -> str:
    """How to reach the admin listener, for the log."""
    if admin.kind == "unix":
        return f"unix://{admin.path}"
    host = getattr(bound, "host", admin.host)
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls is not None and admin.kind == "tcp" else "http"
    return f"{scheme}://{shown}:{getattr(bound, 'port', admin.port)}/"


def _reopen_on_sighup(reactor: object, audit: object) -> None:
    """SIGHUP reopens the audit log too (logrotate moves it, then signals), besides whatever
    it already did (reloading the adapters file)."""
    previous = signal.getsignal(signal.SIGHUP)

    def handler(signum: int, frame: object) -> None:
        reactor.callFromThread(audit.reopen)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGHUP, handler)


def _worker_fds(args: argparse.Namespace) -> list[int] | None:
    """The listening descriptors a worker inherited (``--worker-fds``), or None: not a worker."""
    if args.worker_fds is None:
        return None
    if args.ready_fd is None:
        raise UsageError("--worker-fds needs --ready-fd")
    # A SIGHUP before the adapters file is watched must not end a worker; with no file to
    # reload it has nothing to do at all.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return [int(fd) for fd in args.worker_fds.split(",")]
    except ValueError:
        raise UsageError(f"--worker-fds: {args.worker_fds!r} is not a list of numbers") from None


def _supervise(args: argparse.Namespace, workers: int, listens: Sequence[Address],
               listen_values: Sequence[str], upstream_value: str, config_path: Path | None,
               limits: Limits, busy_poll: float, group_id: int | None,
               tls: ServerTLS | None, audit_path: str | None = None) -> int:
    """Bind the listeners here and serve from ``workers`` child processes that share them."""
    from powerstrip.hooks.config import ConfigError, load_config
    from powerstrip.proxy.workers import Supervisor, bind, shareable, worker_command, worker_share

    refused = [str(address) for address in listens if not shareable(address)]
    if refused:
        raise UsageError(f"--workers {workers}: only tcp:// and unix:// listeners can be "
                         f"shared by several workers, not {', '.join(refused)}")
    if config_path is not None:
        try:
            load_config(config_path)
        except ConfigError as exc:
            raise UsageError(f"invalid configuration, not starting:\n{exc}") from None
    for address in listens:
        if address.kind == "unix":
            prepare_unix_socket(address.path)
    listeners = []
    try:
        for address in listens:
            listeners.append(bind(address, group_id))
    except OSError as exc:
        for listener in listeners:
            listener.sock.close()
            listener.remove_file()
        print(f"powerstrip: cannot listen: {exc}", file=sys.stderr, flush=True)
        return 1
    options = [
        "--upstream", upstream_value,
        "--busy-poll", str(round(busy_poll * 1e6)),
        "--head-timeout", repr(limits.head_timeout),
        "--idle-timeout", repr(limits.idle_timeout),
        "--max-connections", str(worker_share(limits.max_connections, workers)),
        # Found again by each worker as here when none was named: the same working directory.
        *(["--config", str(config_path)] if config_path is not None else []),
    ]
    for value in listen_values:
        options += ["--listen", value]
    if audit_path is not None:
        # Each worker appends its own lines to the same file (whole lines: O_APPEND).
        options += ["--audit-log", audit_path]
    if tls is not None:
        # Each worker does its own handshakes, with the same files (read again, as at start).
        options += ["--tlsverify" if tls.verify else "--tls", "--tlscert", tls.cert,
                    "--tlskey", tls.key, *(["--tlscacert", tls.ca] if tls.ca else [])]
    ready_line = f"export {docker_host_line(listens[0], listeners[0].bound, tls)}"
    return Supervisor(listeners, worker_command(args.verbose, options), workers).run(ready_line)


def trace_command(args: argparse.Namespace) -> int:
    """``powerstrip trace``: the live trace of a running proxy, one block per request."""
    from powerstrip.observe.terminal import AdminTLS, Filters, run

    url = args.admin or os.environ.get("POWERSTRIP_ADMIN") or "http://127.0.0.1:9180"
    tls = None
    if args.tlscacert or args.tlscert:
        tls = AdminTLS(args.tlscacert, args.tlscert, args.tlskey or args.tlscert)
    filters = Filters(args.endpoint or "", args.client or "", args.status or "",
                      args.adapter or "")
    try:
        return run(url, once=args.once, filters=filters, tls=tls)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def check(args: argparse.Namespace) -> int:
    """Validate the configuration file; print every error with its file and line."""
    from powerstrip.hooks.config import ConfigError, load_config
    from powerstrip.hooks.live import stream_warnings

    path = resolve_config(args.config or os.environ.get("POWERSTRIP_CONFIG"))
    if path is None:
        print("no configuration file found: no hooks")
        return 0
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(exc)
        return 1
    for line in stream_warnings(config):
        print(f"{path}: note: {line}")
    print(f"{path}: ok: {len(config.endpoints)} endpoints, {len(config.adapters)} adapters")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="powerstrip", description="Docker Engine API proxy with adapter hooks"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the proxy")
    serve_parser.add_argument(
        "--config",
        help="adapters file (default ./powerstrip.yml, then /etc/powerstrip/adapters.yml)",
    )
    serve_parser.add_argument(
        "--listen", action="append",
        help=f"address to listen on, repeatable (default {DEFAULT_LISTEN})",
    )
    serve_parser.add_argument(
        "--upstream", help=f"the Docker daemon's address (default {DEFAULT_UPSTREAM})"
    )
    serve_parser.add_argument("--socket-group", help="group owning unix listener sockets")
    serve_parser.add_argument(
        "--busy-poll", metavar="MICROSECONDS",
        help="for a client that sends requests back to back, poll this long before sleeping "
        "after its request or answer: lower latency for some CPU; 0 turns it off "
        f"(default {DEFAULT_BUSY_POLL}; env POWERSTRIP_BUSY_POLL)",
    )
    serve_parser.add_argument(
        "--head-timeout", metavar="SECONDS",
        help="refuse (408) a request head not whole this long after it began; 0: wait for ever "
        "(default 30; env POWERSTRIP_HEAD_TIMEOUT)",
    )
    serve_parser.add_argument(
        "--idle-timeout", metavar="SECONDS",
        help="close a connection left this long between requests (never a stream or a "
        "hijacked one); 0: keep it (default 300; env POWERSTRIP_IDLE_TIMEOUT)",
    )
    serve_parser.add_argument(
        "--max-connections", metavar="N",
        help="client connections open at once; past it a client gets a 503; 0: no limit "
        "(default 1024; env POWERSTRIP_MAX_CONNECTIONS)",
    )
    serve_parser.add_argument(
        "--workers", metavar="N",
        help="serve from N processes sharing the listeners (tcp:// and unix:// only), so that "
        "a burst of connections uses more than one core; each takes its share of "
        "--max-connections; a worker that dies stops them all, it is not restarted "
        "(default 1; env POWERSTRIP_WORKERS)",
    )
    serve_parser.add_argument(
        "--tls", action="store_true",
        help="serve the tcp:// listeners over TLS with --tlscert and --tlskey, asking clients "
        "for no certificate (env POWERSTRIP_TLS=1)",
    )
    serve_parser.add_argument(
        "--tlsverify", action="store_true",
        help="serve the tcp:// listeners over TLS and let in only clients with a certificate "
        "signed by --tlscacert, as dockerd --tlsverify (env POWERSTRIP_TLSVERIFY=1)",
    )
    serve_parser.add_argument(
        "--tlscacert", metavar="PEM",
        help="the authorities that sign clients' certificates (env POWERSTRIP_TLSCACERT)",
    )
    serve_parser.add_argument(
        "--tlscert", metavar="PEM",
        help="the proxy's certificate, then its chain (env POWERSTRIP_TLSCERT)",
    )
    serve_parser.add_argument("--tlskey", metavar="PEM",
                              help="the proxy's private key (env POWERSTRIP_TLSKEY)")
    serve_parser.add_argument(
        INSECURE_FLAG, action="store_true",
        help="start even a listener that lets clients in unauthenticated from beyond this "
        "host (plain TCP, or TLS without --tlsverify, on an address other than loopback), "
        "giving whoever reaches it root on this host",
    )
    serve_parser.add_argument(
        "--admin", metavar="ADDR",
        help="serve /metrics, /healthz, /readyz and the live trace /trace on this address, apart "
        "from the Docker API (same forms and TLS options as --listen; off by default; env "
        "POWERSTRIP_ADMIN)",
    )
    serve_parser.add_argument(
        "--audit-log", metavar="PATH",
        help="append one JSON line per request to PATH ('-': standard output); SIGHUP reopens "
        "it (env POWERSTRIP_AUDIT_LOG)",
    )
    serve_parser.add_argument(
        "--trace-size", metavar="N",
        help="requests the live trace keeps in memory; 0 turns the trace off "
        f"(default {DEFAULT_TRACE_SIZE}; env POWERSTRIP_TRACE_SIZE)",
    )
    serve_parser.add_argument(
        "--trace-body", metavar="CHARS",
        help="cut bodies the trace shows at this many characters "
        f"(default {DEFAULT_TRACE_BODY}; env POWERSTRIP_TRACE_BODY)",
    )
    # How a worker started by --workers learns its listening sockets and says it listens.
    serve_parser.add_argument("--worker-fds", help=argparse.SUPPRESS)
    serve_parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    serve_parser.set_defaults(func=serve)

    check_parser = commands.add_parser("check", help="validate the adapters file")
    check_parser.add_argument("--config", help="adapters file (found as serve finds it)")
    check_parser.set_defaults(func=check)

    trace_parser = commands.add_parser(
        "trace", help="print the live trace of a running proxy in the terminal")
    trace_parser.add_argument(
        "--admin", metavar="URL",
        help="the proxy's admin listener (default $POWERSTRIP_ADMIN, else "
        "http://127.0.0.1:9180)")
    trace_parser.add_argument("--once", action="store_true",
                              help="print the requests kept so far and exit")
    for name, what in (("endpoint", "the adapters-file key that matched"),
                       ("client", "the client's name"),
                       ("status", "the status, such as 403 or 4xx"),
                       ("adapter", "the name of an adapter it called")):
        trace_parser.add_argument(f"--{name}", metavar="TEXT",
                                  help=f"only requests whose {what} contains TEXT")
    trace_parser.add_argument("--tlscacert", metavar="PATH",
                              help="verify an https:// admin listener with this CA")
    trace_parser.add_argument("--tlscert", metavar="PATH",
                              help="client certificate for an admin listener with --tlsverify")
    trace_parser.add_argument("--tlskey", metavar="PATH", help="the client certificate's key")
    trace_parser.set_defaults(func=trace_command)

    for name, entry in added_commands().items():
        # Only listed: loading it here would import the other package for every command.
        added = commands.add_parser(
            name, help=f"from {entry.module} (see powerstrip {name} --help)", add_help=False
        )
        # Reached only after global options (``powerstrip -v run``); ``main`` hands a command
        # named first its arguments, which this parser does not know.
        added.set_defaults(func=lambda args, entry=entry: run_added(entry, []))
    return parser


def added_commands() -> dict[str, EntryPoint]:
    """The subcommands other installed packages add (group ``powerstrip.commands``), by name;
    listed from the installed metadata without importing anything."""
    added: dict[str, EntryPoint] = {}
    for entry in entry_points(group=COMMANDS_GROUP):
        # The first of a name wins, as the first distribution on sys.path does for imports.
        if entry.name not in BUILTIN_COMMANDS:
            added.setdefault(entry.name, entry)
    return added


def load_command(entry: EntryPoint) -> Callable[[list[str]], int | None]:
    """The ``main`` of an added subcommand. ``UsageError`` when the package providing it is not
    installed although its entry point is (a packaging that left the development package out);
    any other import failure is a bug in that package and propagates."""
    try:
        return entry.load()
    except ModuleNotFoundError as exc:
        parts = entry.module.split(".")
        if exc.name not in {".".join(parts[:n]) for n in range(1, len(parts) + 1)}:
            raise
        raise UsageError(
            f"the {entry.name} command needs {entry.module}, which is not installed "
            f"({parts[0]}: the development tooling, in Powerstrip's source tree; "
            "pip install . from there)"
        ) from None


def run_added(entry: EntryPoint, argv: Sequence[str]) -> int:
    """Load the added subcommand ``entry`` and run it with ``argv``; its exit status."""
    return load_command(entry)(list(argv)) or 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``powerstrip`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    entry = added_commands().get(argv[0]) if argv else None
    if entry is not None:
        # An added command has its own parser; hand it everything after its name, --help too.
        try:
            return run_added(entry, argv[1:])
        except UsageError as exc:
            print(f"powerstrip: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    # A worker's lines carry its pid: several processes write to the same stderr.
    worker = getattr(args, "worker_fds", None) is not None
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s" + ("[%(process)d]" if worker else "")
        + ": %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"powerstrip: {exc}", file=sys.stderr)
        return 2

"""A second Powerstrip, built from another git revision, measured in the same bench run.

``python bench/bench.py --compare REV`` extracts REV's tree (``git archive``) into the bench's
temporary directory, which is removed at exit, and starts that tree's ``python -m powerstrip
serve`` with the same flags as the current proxy, its ``PYTHONPATH`` pointing at that tree.
Its targets (``base``, ``base-unix``, ``base N hooks``) take turns with the others in the
latency, transfer and hook workloads, so both trees are measured against the same engine, on
the same machine, in the same minutes; the summary puts each tree's ratio to direct side by
side.

In every round the current proxy takes its turn just before the base one. ``--compare HEAD``
runs the same tree in both places: how far its ``after/bef`` column strays from 1.00 is what
that order and the run's noise alone account for.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from powerstrip_dev.processes import ServiceError, child_env, start_proxy

REPOSITORY = Path(__file__).resolve().parent.parent

#: The current proxy's target for each of the base proxy's: ``N hooks`` for ``base N hooks``.
PAIRS = {"base": "powerstrip", "base-unix": "ps-unix"}


def current_name(base_name: str) -> str | None:
    """The current proxy's target measured against ``base_name``, or None if it is not one of
    the base proxy's targets."""
    if base_name in PAIRS:
        return PAIRS[base_name]
    if base_name.startswith("base ") and base_name.endswith(" hooks"):
        return base_name[len("base "):]
    return None


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPOSITORY), *args], check=True,
                          capture_output=True, text=True).stdout.strip()


class Baseline:
    """REV's tree, extracted under ``workdir``, and the proxies started from it."""

    def __init__(self, rev: str, workdir: Path) -> None:
        try:
            self.commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
        except subprocess.CalledProcessError:
            raise RuntimeError(f"--compare: {rev!r} is not a revision of {REPOSITORY}") from None
        self.rev = rev
        self.label = f"{rev} ({self.commit[:10]})" if not self.commit.startswith(rev) else rev
        self.tree = workdir / "base-tree"
        self.tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", self.commit],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(self.tree)], input=archive, check=True)
        self.env = {"PYTHONPATH": str(self.tree), "POWERSTRIP_BUSY_POLL": ""}
        # The proxy must run REV's package, not the installed (editable) current one.
        imported = subprocess.run(
            [sys.executable, "-c", "import powerstrip; print(powerstrip.__file__)"],
            check=True, capture_output=True, text=True, cwd=workdir,
            env=child_env(self.env),
        ).stdout.strip()
        if not Path(imported).resolve().is_relative_to(self.tree.resolve()):
            raise RuntimeError(f"--compare: the base proxy would import {imported}, "
                               f"not the tree of {rev} in {self.tree}")
        self.main_pid: int | None = None
        # What the current proxy runs: the working tree as it is now, when it starts.
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "powerstrip")
        self.current = (f"HEAD ({git('rev-parse', '--short=10', 'HEAD')}"
                        f"{' + uncommitted changes to powerstrip/' if changed else ''})")

    def start_powerstrip(
        self, upstream: str, workdir: Path, name: str, config: Path | None = None,
        unix_socket: Path | None = None, busy_poll: int | None = None,
    ) -> tuple[subprocess.Popen, str]:
        """``bench.start_powerstrip``, for REV's tree: the same command line and flags."""
        extra = ["--listen", f"unix://{unix_socket}"] if unix_socket is not None else []
        if busy_poll is not None:
            extra += ["--busy-poll", str(busy_poll)]
        try:
            proxy = start_proxy(upstream, *extra, config=config, logdir=workdir, name=name,
                                env=self.env)
        except ServiceError as exc:
            raise RuntimeError(f"powerstrip of {self.rev} did not start: {exc}") from None
        if self.main_pid is None:
            self.main_pid = proxy.proc.pid
        return proxy.proc, proxy.docker_host

    def summary(self, results: list[tuple[str, dict, str]], current_rss: float | None) -> None:
        """Print, for every workload that measured both trees, direct, each tree's figure,
        each one's ratio to direct and the current one's ratio to the base."""
        print(f"\nbefore: {self.label}; after: {self.current}")
        print(f"{'':22}{'direct':>10}{'before':>10}{'after':>10}"
              f"{'before/d':>10}{'after/d':>9}{'after/bef':>10}")
        for label, values, unit in results:
            scale = {"us": 1e6, "s": 1e3, "ms": 1e3}.get(unit, 1)
            shown = {"us": "us", "s": "ms"}.get(unit, unit)
            rows = [(current_name(name), value) for name, value in values.items()]
            rows = [(name, value) for name, value in rows if name in values]
            if not rows:
                continue
            print(label)
            direct = values["direct"]
            for name, base_value in rows:
                current = values[name]
                print(f"  {name:20}{figure(direct * scale)}{figure(base_value * scale)}"
                      f"{figure(current * scale)}{base_value / direct:>9.2f}x"
                      f"{current / direct:>8.2f}x{current / base_value:>9.2f}x  {shown}")
        if current_rss is not None and self.main_pid is not None:
            print(f"peak RSS (VmHWM)\n  {'powerstrip':20}{'':>10}"
                  f"{peak_rss_mib(self.main_pid):>10.1f}{current_rss:>10.1f}  MiB")


def figure(value: float) -> str:
    """A column of the summary: two decimals for a small value (a refused create in ms)."""
    return f"{value:>10.2f}" if value < 10 else f"{value:>10.1f}"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")

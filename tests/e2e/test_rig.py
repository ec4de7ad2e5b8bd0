"""The README's run command and ``powerstrip demo``, run as a user runs them."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from powerstrip_dev.processes import ServiceError, start_service
from tests.e2e.conftest import REPO, docker, ok, unique


@pytest.mark.timeout(120)
def test_run_command_chains_the_example_adapters(engine) -> None:
    """``python -m powerstrip_dev.rig`` in front of an engine: the adapters of powerstrip.yml start,
    a create goes through volumes, network and policy, and SIGTERM stops it all cleanly."""
    rundir = Path(tempfile.mkdtemp(prefix="ps-rig-"))
    try:
        rig = start_service(
            "rig",
            [sys.executable, "-m", "powerstrip_dev.rig", "--listen", "tcp://127.0.0.1:0",
             "--upstream", engine.host, "--run-dir", str(rundir)],
            rundir, prefix="export DOCKER_HOST=", timeout=60, cwd=REPO,
        )
    except ServiceError as exc:
        pytest.fail(str(exc))
    host = rig.value
    dataset, name = unique("rigdata"), unique("rig")
    try:
        out = ok(docker(host, "run", "--name", name, "-e", "WEAVE_CIDR=10.9.8.7/24",
                        "-v", f"/flocker/{dataset}:/data", "busybox",
                        "sh", "-c", "echo kept > /data/f; cat /data/f; ip -4 -o addr show eth0"))
        assert b"kept" in out and b"inet 10.9.8.7/24" in out
        mounts = ok(docker(engine.host, "inspect", "-f",
                           "{{range .Mounts}}{{.Type}} {{.Name}}{{end}}", name))
        assert mounts.startswith(b"volume ") and dataset.encode() in mounts
        refused = docker(host, "run", "--rm", "--privileged", "busybox", "true")
        assert refused.returncode != 0 and b"policy" in refused.stderr.lower()
        assert "changed since call 1" in (rundir / "logs" / "debug.log").read_text()
        # The admin listener make run turns on: the refusal is counted, the trace page is up.
        assert "the live trace: http://127.0.0.1:9180/trace" in rig.log()
        with urllib.request.urlopen("http://127.0.0.1:9180/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        assert 'powerstrip_hook_calls_total{adapter="policy",outcome="refused",phase="pre"} 1.0' \
            in metrics, metrics
        with urllib.request.urlopen("http://127.0.0.1:9180/trace", timeout=10) as answer:
            assert answer.headers["Content-Type"].startswith("text/html")
    finally:
        rig.proc.send_signal(signal.SIGTERM)
        code = rig.proc.wait(20)
        log = rig.log()
        docker(engine.host, "rm", "-f", name)
        shutil.rmtree(rundir, ignore_errors=True)
    assert code == 0, log
    assert "Traceback" not in log, log
    assert "adapter policy at http://127.0.0.1:9104/" in log
    # Every adapter the rig started has stopped with it: nothing listens on their ports.
    for port in range(9101, 9105):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.mark.timeout(180)
def test_run_command_starts_a_throwaway_engine_when_no_daemon_answers() -> None:
    """With no daemon at the upstream address, the rig starts its own engine, serves through
    it, and stops it again on SIGTERM."""
    rundir = Path(tempfile.mkdtemp(prefix="ps-rig-", dir="/tmp"))
    missing = rundir / "no-daemon.sock"
    try:
        rig = start_service(
            "rig",
            [sys.executable, "-m", "powerstrip_dev.rig", "--listen", "tcp://127.0.0.1:0",
             "--upstream", f"unix://{missing}", "--run-dir", str(rundir)],
            rundir, prefix="export DOCKER_HOST=", timeout=120, cwd=REPO,
        )
    except ServiceError as exc:
        shutil.rmtree(rundir, ignore_errors=True)
        pytest.fail(str(exc))
    pid = 0
    try:
        assert f"no Docker daemon at unix://{missing}; starting a throwaway engine" in rig.log()
        out = ok(docker(rig.value, "run", "--rm", "busybox", "echo", "through the rig"))
        assert out == b"through the rig\n"
        pid = int((rundir / "engine" / "docker.pid").read_text())
        assert Path(f"/proc/{pid}").exists()
    finally:
        rig.proc.send_signal(signal.SIGTERM)
        code = rig.proc.wait(30)
        log = rig.log()
    try:
        assert code == 0, log
        # The engine it started is gone with it.
        assert pid and (not Path(f"/proc/{pid}").exists() or b"dockerd" not in Path(
            f"/proc/{pid}/cmdline").read_bytes()), log
    finally:
        subprocess.run([sys.executable, "-m", "powerstrip_dev.engine", "stop", "--root",
                        str(rundir / "engine"), "--remove"], cwd=REPO, check=False,
                       capture_output=True)
        shutil.rmtree(rundir, ignore_errors=True)


@pytest.mark.timeout(300)
def test_local_demo_tells_the_story_end_to_end() -> None:
    """``powerstrip demo --local``: two engines, the data and the address follow the
    container. (The cluster story is tests/e2e/test_cluster_demo.py.)"""
    result = subprocess.run([sys.executable, "-m", "powerstrip", "demo", "--local"],
                            capture_output=True,
                            text=True, timeout=280, cwd=REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "✓ it read the file written on host A: the data followed" in output
    assert "✓ it had the address 10.2.1.5/24 on host B" in output
    assert "✗" not in output
    assert "demo passed" in output

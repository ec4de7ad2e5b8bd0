"""The cluster demo's command without its cluster: what it does when a step fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from powerstrip_dev import cluster


class FakeCluster:
    """Records start and stop; its hosts are never touched by the failing step."""

    instances: list[FakeCluster] = []

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.hosts: dict[str, Any] = {"A": object(), "B": object()}
        self.stopped = False
        FakeCluster.instances.append(self)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True


def test_a_failed_step_exits_1_says_which_and_stops_everything(monkeypatch, capsys) -> None:
    FakeCluster.instances.clear()
    monkeypatch.setattr(cluster, "Cluster", FakeCluster)
    monkeypatch.setattr(cluster.engine, "ensure_packages", lambda: None)
    later: list[str] = []

    def fails(a: Any, b: Any) -> None:
        raise cluster.StepFailed("host B joined it as a worker")

    monkeypatch.setattr(cluster, "swarm_step", fails)
    monkeypatch.setattr(cluster, "compose_step", lambda *args: later.append("compose"))
    assert cluster.main([]) == 1
    out = capsys.readouterr().out
    assert "✗ host B joined it as a worker" in out
    assert "demo FAILED" in out
    [made] = FakeCluster.instances
    assert made.stopped
    assert later == [], "a step ran after the first that failed"
    # Kept for the logs it names.
    assert made.workdir.exists()
    made.workdir.rmdir()


def test_the_demo_policy_is_the_shipped_one_with_swarm_mode_allowed(tmp_path) -> None:
    shipped = yaml.safe_load((cluster.rig.ADAPTERS / "policy.yml").read_text())
    cluster.demo_policy(tmp_path / "policy.yml")
    demo = yaml.safe_load((tmp_path / "policy.yml").read_text())
    assert shipped["rules"]["swarm"] == "forbid"
    assert demo["rules"]["swarm"] == "allow"
    for name, rule in shipped["rules"].items():
        if name not in ("swarm", "endpoints"):
            assert demo["rules"][name] == rule, name
    allowed = demo["rules"]["endpoints"]["allow"]
    assert set(shipped["rules"]["endpoints"]["allow"]) <= set(allowed)
    assert "POST /swarm/init" in allowed and "POST /services/create" in allowed
    assert demo["clients"] == shipped["clients"]


@pytest.mark.parametrize("args", [["--local", "--help"], ["--help"]])
def test_demo_help_names_both_stories(args, capsys) -> None:
    from powerstrip_dev import demo

    with pytest.raises(SystemExit):
        demo.main(args)
    assert "--local" in capsys.readouterr().out

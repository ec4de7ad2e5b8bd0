"""The shipped powerstrip.yml is the rig's chain, and it loads."""

from __future__ import annotations

from pathlib import Path

from powerstrip.hooks.config import load_config
from powerstrip.hooks.matching import Matcher
from powerstrip.hooks.plans import make_plan
from powerstrip_dev.rig import DEFAULT_URLS, NAMES, chain_config

ROOT = Path(__file__).resolve().parents[2]


def test_powerstrip_yml_is_the_rig_chain() -> None:
    assert (ROOT / "powerstrip.yml").read_text() == chain_config(DEFAULT_URLS)


def test_the_chain_loads_and_orders_the_adapters() -> None:
    config = load_config(ROOT / "powerstrip.yml")
    assert set(config.adapters) == set(NAMES)
    # Every endpoint a create matches, in file order: the policy judges what the others made.
    plan = make_plan(config, Matcher(config.endpoints).match("POST", "/v1.41/containers/create"))
    assert plan is not None
    pre = [hook.adapter.name for hook in plan.pre]
    assert [n for n in pre if n != "debug"] == ["volumes", "network", "policy"]
    assert pre[0] == "debug"
    # The policy sees every request, which its endpoints rule needs.
    for method, target in [("HEAD", "/_ping"), ("POST", "/v1.41/swarm/init"),
                           ("POST", "/v1.41/services/create")]:
        plan = make_plan(config, Matcher(config.endpoints).match(method, target))
        assert plan is not None and [h.adapter.name for h in plan.pre] == ["policy"]
    start = next(e for e in config.endpoints if e.key == "POST /*/containers/*/start")
    assert list(start.post) == ["debug", "network"]
    assert config.adapters["volumes"].timeout >= 60
    # The policy learns who asks, for the rules of adapters/policy.yml's clients sections.
    assert config.adapters["policy"].protocol == 2

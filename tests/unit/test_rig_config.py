"""The shipped powerstrip.yml is the rig's chain, and it loads."""

from __future__ import annotations

from pathlib import Path

from powerstrip.hooks.config import load_config
from powerstrip_dev.rig import DEFAULT_URLS, NAMES, chain_config

ROOT = Path(__file__).resolve().parents[2]


def test_powerstrip_yml_is_the_rig_chain() -> None:
    assert (ROOT / "powerstrip.yml").read_text() == chain_config(DEFAULT_URLS)


def test_the_chain_loads_and_orders_the_adapters() -> None:
    config = load_config(ROOT / "powerstrip.yml")
    assert set(config.adapters) == set(NAMES)
    create = next(e for e in config.endpoints if e.key == "POST /*/containers/create")
    assert [n for n in create.pre if n != "debug"] == ["volumes", "network", "policy"]
    assert create.pre[0] == "debug"
    start = next(e for e in config.endpoints if e.key == "POST /*/containers/*/start")
    assert list(start.post) == ["debug", "network"]
    assert config.adapters["volumes"].timeout >= 60

"""The live trace page in a real headless browser: Debian's chromium through chromium-driver,
driven by selenium. The page is open while ``docker run`` goes through the shipped chain of
example adapters (debug, volumes, network, policy); it must show each request as it ends, each
hook in order, the volumes adapter's change as a diff, and the policy's refusal with its message.

A screenshot of the page is kept as an artefact: ``$POWERSTRIP_ARTEFACTS/trace.png``, by default
``.artefacts/trace.png`` in the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from powerstrip_dev.processes import start_proxy, stop_process
from powerstrip_dev.rig import chain_config, start_adapters, stop_all
from tests.e2e.conftest import REPO, docker, ok, unique, wait_for

pytestmark = pytest.mark.timeout(240)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTEFACTS = Path(os.environ.get("POWERSTRIP_ARTEFACTS", REPO / ".artefacts"))
#: The create's pre-hooks as powerstrip.yml chains them, then its post-hook.
CREATE_HOOKS = [("debug", "pre"), ("volumes", "pre"), ("debug", "pre"), ("network", "pre"),
                ("debug", "pre"), ("policy", "pre"), ("network", "post")]


@pytest.fixture(scope="module")
def chain(engine) -> Iterator[dict[str, Any]]:
    """The example adapters and a proxy chaining them as ``make run`` does, with an admin
    listener on a free port."""
    directory = Path(tempfile.mkdtemp(prefix="ps-trace-"))
    adapters = start_adapters(engine.host, directory / "logs", directory / "datasets.sqlite",
                              "local")
    proxy = None
    try:
        config = directory / "powerstrip.yml"
        config.write_text(chain_config({name: s.url for name, s in adapters.items()}))
        proxy = start_proxy(engine.host, "--admin", "tcp://127.0.0.1:0", logdir=directory,
                            config=config, name="traced")
        found: list[str] = []

        def admin() -> bool:
            found[:] = re.findall(r"admin listener: (http://\S+?)/? ", proxy.log())
            return bool(found)

        assert wait_for(admin, 10), proxy.log()
        yield {"proxy": proxy, "admin": found[0].rstrip("/"), "directory": directory}
    finally:
        if proxy is not None:
            assert stop_process(proxy.proc) == 0, proxy.log()
        stop_all(adapters.values())
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1400,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=ChromeService(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _rows(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The request rows the page shows, newest first, as their data attributes and text."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#requests li.request')].map(li => ({
          seq: li.dataset.seq, status: li.dataset.status, method: li.dataset.method,
          endpoint: li.dataset.endpoint, client: li.dataset.client,
          hidden: li.offsetParent === null,
          text: li.textContent,
          chips: [...li.querySelectorAll('.hook-chip')].map(c =>
                    [c.dataset.adapter, c.dataset.phase, c.dataset.outcome])}));""")


def _row(driver: webdriver.Chrome, wanted: str, seconds: float = 30) -> dict[str, Any]:
    """The newest row whose text contains ``wanted``, once the page shows one."""
    def found(d: webdriver.Chrome) -> dict[str, Any] | bool:
        try:
            return next((r for r in _rows(d) if wanted in r["text"]), False)
        except StaleElementReferenceException:
            return False
    return WebDriverWait(driver, seconds).until(found)


def _open(driver: webdriver.Chrome, seq: str) -> list[dict[str, Any]]:
    """Click the request ``seq`` and read the hook sections of its detail pane."""
    driver.find_element(By.CSS_SELECTOR, f'#requests li.request[data-seq="{seq}"]').click()
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(
        By.CSS_SELECTOR, "#detail section.hook"))
    return driver.execute_script("""
        return [...document.querySelectorAll('#detail section.hook')].map(s => ({
          adapter: s.dataset.adapter, phase: s.dataset.phase, outcome: s.dataset.outcome,
          changed: (s.querySelector('.changed') || {}).textContent || '',
          message: (s.querySelector('.message') || {}).textContent || '',
          added: [...s.querySelectorAll('.diff ins, .diff .add')].map(e => e.textContent),
          removed: [...s.querySelectorAll('.diff del, .diff .del')].map(e => e.textContent)}));
    """)


def _clear(field: Any) -> None:
    """Empty a text field as a person does, so that the page hears an input event."""
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.BACKSPACE)


def test_the_trace_page_shows_each_hook_its_diffs_and_a_refusal(engine, chain, browser) -> None:
    host = chain["proxy"].docker_host
    browser.get(f"{chain['admin']}/trace")
    # Live at once, though nothing is kept yet to replay (not at the first heartbeat, 15 s on).
    WebDriverWait(browser, 5).until(
        lambda d: d.find_element(By.ID, "state").text.strip().lower() == "live")
    dataset, name = unique("tracedata"), unique("traced")
    try:
        ok(docker(host, "run", "--name", name, "-e", "WEAVE_CIDR=10.9.7.5/24",
                  "-e", "SECRET_TOKEN=hunter2-not-shown", "-v", f"/flocker/{dataset}:/data",
                  "busybox", "true"))
        refused = docker(host, "run", "--rm", "--privileged", "busybox", "true")
        assert refused.returncode != 0 and b"privileged" in refused.stderr.lower()

        created = _row(browser, f"/containers/create?name={name}")
        assert created["status"] == "201" and created["method"] == "POST"
        assert created["endpoint"] == "POST /*/containers/create"
        assert created["client"].startswith("tcp client 127.0.0.1:")
        assert created["client"] in created["text"] and "201" in created["text"]
        assert [tuple(c[:2]) for c in created["chips"]] == CREATE_HOOKS
        assert all(c[2] == "ok" for c in created["chips"]), created["chips"]

        hooks = _open(browser, created["seq"])
        assert [(h["adapter"], h["phase"]) for h in hooks] == CREATE_HOOKS
        volumes = hooks[1]
        assert "Body.HostConfig" in volumes["changed"], volumes
        # The volumes adapter turns the /flocker bind into a named volume: the old bind is a
        # removed line of the diff, the dataset's volume an added one.
        assert any(f"/flocker/{dataset}" in line for line in volumes["removed"]), volumes
        assert any(dataset in line for line in volumes["added"]), volumes
        assert not hooks[0]["added"] and not hooks[0]["removed"]  # debug changes nothing
        detail = browser.find_element(By.ID, "detail").get_attribute("textContent")
        assert "hunter2-not-shown" not in detail and "SECRET_TOKEN" in detail

        denied = _row(browser, "/containers/create", seconds=10)
        assert denied["status"] == "403", denied
        assert denied["chips"][-1] == ["policy", "pre", "refused"]
        hooks = _open(browser, denied["seq"])
        assert hooks[-1]["adapter"] == "policy" and hooks[-1]["outcome"] == "refused"
        assert "privileged" in hooks[-1]["message"].lower(), hooks[-1]

        # The filters: by status and by adapter; the others hide, nothing is lost.
        status = browser.find_element(By.ID, "filter-status")
        status.send_keys("4xx")
        WebDriverWait(browser, 5).until(lambda d: all(
            r["hidden"] == (not r["status"].startswith("4")) for r in _rows(d)))
        _clear(status)
        browser.find_element(By.ID, "filter-adapter").send_keys("volumes")
        WebDriverWait(browser, 5).until(lambda d: all(
            r["hidden"] == (not any(c[0] == "volumes" for c in r["chips"])) for r in _rows(d)))
        assert not next(r for r in _rows(browser) if r["seq"] == created["seq"])["hidden"]
        _clear(browser.find_element(By.ID, "filter-adapter"))
        WebDriverWait(browser, 5).until(lambda d: not any(r["hidden"] for r in _rows(d)))
        count = browser.find_element(By.ID, "count").text
        assert count == f"{len(_rows(browser))} shown of {len(_rows(browser))}", count

        _open(browser, created["seq"])
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(ARTEFACTS / "trace.png"))
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        docker(engine.host, "rm", "-f", name)
        docker(engine.host, "volume", "rm", "-f", dataset)

"""The router's dashboard in a real browser: headless Chromium loads `/dashboard` from a live
deployment (emulated instances, an API key, a driven controller) after traffic, is asked for the
key, and then shows every instance, the route decisions with the reasons the API returned, a
latency chart with points, and the controller's threshold change as an event on the timeline.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from dashboard_harness import (
    API_KEY,
    Traffic,
    browser_missing,
    give_key,
    open_browser,
    read_page,
    send_traffic,
    shows_traffic,
    start,
)
from services_harness import System

from polling import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or ""),
]
PAGE_TIMEOUT_S = 90.0  # samples come every 2 s; generous for a loaded two-core machine


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Traffic]]:
    system = start(tmp_path_factory.mktemp("dashboard"))
    try:
        yield system, send_traffic(system)
    finally:
        system.launcher.stop()


@pytest.fixture
def driver() -> Iterator[Any]:
    browser = open_browser()
    try:
        yield browser
    finally:
        browser.quit()


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10):
            return 200
    except urllib.error.HTTPError as exc:
        return exc.code


def test_state_wants_the_api_key(live: tuple[System, Traffic]) -> None:
    system, _ = live
    url = system.url + "/dashboard/state"
    assert _status(url, {}) == 401
    assert _status(url, {"Authorization": "Bearer not-the-key"}) == 401
    assert _status(url, {"Authorization": f"Bearer {API_KEY}"}) == 200


def test_the_page_shows_the_live_deployment_once_given_the_key(
    live: tuple[System, Traffic], driver: Any
) -> None:
    system, traffic = live
    driver.get(system.url + "/dashboard")
    give_key(driver, "not-the-key")  # once the page asked for a key: a wrong one is refused
    wait_until(lambda: "refused" in read_page(driver)["status"], PAGE_TIMEOUT_S, "the refusal")
    assert read_page(driver)["instances"] == []  # nothing shown without the key

    give_key(driver, API_KEY)
    wait_until(lambda: shows_traffic(read_page(driver), traffic), PAGE_TIMEOUT_S, "live panels")
    page = read_page(driver)

    names = [i.name for i in system.topology.instances]
    assert [i["name"] for i in page["instances"]] == names
    assert {i["health"] for i in page["instances"]} <= {"ready", "converting", "draining"}
    shown = {(r["route"], r["reason"]) for r in page["routes"]}
    sent = {(s["route"], s["reason"]) for s in traffic.summaries}
    assert sent <= shown  # each decision with the reason the API returned
    assert {"prfaas", "pd_prefill"} <= {route for route, _ in sent}
    assert page["ttft_paths"] == 3  # p50, p90, p99
    assert any(d["kind"] == "threshold" for d in traffic.decisions)
    assert "threshold" in page["events"] and page["markers"] >= 1
    assert page["link"]["capacity"] == "10.0 Gbps"
    assert not page["key_form_shown"]

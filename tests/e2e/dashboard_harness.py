"""The router dashboard against a live deployment, for its browser test and for
`scripts/dashboard_screenshot.py`: the controller tests' topology of emulated instances (1 PrfaaS
prefill, PD prefill and 2 PD decode, convertible; `controller_harness.py`) behind an API key with
a driven `[controller]`, traffic that makes
the controller move t (short prompts stay local while t is high, long ones offload after the
tick), and headless Chromium (Debian's `chromium` and `chromedriver`, driven by selenium) reading
the page's panels back.
"""

from __future__ import annotations

import json
import random
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller_harness import TOKEN, write_topology
from services_harness import System, launch

from polling import wait_until

API_KEY = "sk-dashboard-test-key"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
READY_TIMEOUT_S = 300.0
MAX_TOKENS = 8
KEY_PROMPT_TIMEOUT_S = 60.0
WINDOW = (1280, 900)


def browser_missing() -> str | None:
    """Why the browser cannot run here (None: it can)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if not missing:
        return None
    return f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver)"


def start(tmp: Path) -> System:
    """The controller tests' topology behind `API_KEY`, its engines sleeping their emulated
    durations (latencies worth charting)."""
    path = write_topology(tmp, with_controller=True, api_keys=(API_KEY,), time_scale=1.0)
    return launch(path, tmp / "logs", READY_TIMEOUT_S)


def post(url: str, body: dict[str, Any], key: str) -> Any:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())


def stream_completion(system: System, prompt: list[int]) -> dict[str, Any]:
    """One streamed completion; the `prfaas` field of its last chunk (route, reason, ...)."""
    body = {"model": system.model, "prompt": prompt, "max_tokens": MAX_TOKENS, "stream": True}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}
    request = urllib.request.Request(
        system.url + "/v1/completions", json.dumps(body).encode(), headers, method="POST"
    )
    summary: dict[str, Any] = {}
    with urllib.request.urlopen(request, timeout=120) as reply:
        for line in reply:
            data = line.decode().strip().removeprefix("data: ")
            if data.startswith("{"):
                summary = json.loads(data).get("prfaas", summary)
    assert summary, "the stream ended without its prfaas summary"
    return summary


@dataclass
class Traffic:
    """What was sent: each request's summary, and the controller's decisions."""

    summaries: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)


def send_traffic(system: System, seed: int = 0) -> Traffic:
    """12 requests of 200 to 4000 tokens on the controller's clock, a tick (t moves from
    INITIAL_THRESHOLD to Eq. 7's), then 8 more, some of which offload."""
    rng, traffic = random.Random(seed), Traffic()
    internal = system.url + "/internal/control"
    for k in range(20):
        at_s = 0.5 * k if k < 12 else 10.5 + 0.5 * (k - 12)
        if k == 12:
            tick = post(internal + "/tick", {"at_s": 10.0}, TOKEN)
            traffic.decisions += tick["decisions"]
        post(internal + "/clock", {"at_s": at_s}, TOKEN)
        num_tokens = min(4000, max(200, int(rng.lognormvariate(7.2, 0.8))))
        prompt = [rng.randrange(10, 250) for _ in range(num_tokens)]
        traffic.summaries.append(stream_completion(system, prompt))
    return traffic


def open_browser() -> Any:
    """Headless Chromium through Debian's chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    viewport = {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", viewport)  # the page's own size
    return driver


def give_key(driver: Any, key: str) -> None:
    """Wait for the page to ask for a key (its state answered 401), type `key` and submit it."""
    from selenium.webdriver.common.by import By

    wait_until(lambda: read_page(driver)["key_form_shown"], KEY_PROMPT_TIMEOUT_S, "the key prompt")
    field_ = driver.find_element(By.ID, "api-key")
    field_.clear()
    field_.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#key-form button").click()


_READ_PAGE = """
const all = (sel) => [...document.querySelectorAll(sel)];
const text = (row, f) => row.querySelector(`[data-field="${f}"]`).textContent;
return {
  status: document.getElementById("status").textContent,
  key_form_shown: document.getElementById("key-form").classList.contains("shown"),
  updates: Number(document.body.dataset.updates || 0),
  instances: all("#instances tr[data-instance]").map((r) => ({
    name: r.dataset.instance, role: text(r, "role"), health: text(r, "health")})),
  routes: all("#routes tr.route-row").map((r) => ({
    route: r.dataset.route, reason: r.querySelector("td.reason").textContent})),
  events: all("#events tr.event-row").map((r) => r.dataset.kind),
  ttft_points: Number(document.getElementById("ttft-chart").dataset.numPoints),
  itl_points: Number(document.getElementById("itl-chart").dataset.numPoints),
  timeline_points: Number(document.getElementById("timeline-chart").dataset.numPoints),
  ttft_paths: all("#ttft-chart path.series").length,
  markers: all("#timeline-chart line.event-marker").length,
  link: Object.fromEntries(all("#link dd").map((d) => [d.dataset.field, d.textContent])),
};
"""


def read_page(driver: Any) -> dict[str, Any]:
    """The page's panels as the browser shows them."""
    page: dict[str, Any] = driver.execute_script(_READ_PAGE)
    return page


def shows_traffic(page: dict[str, Any], traffic: Traffic) -> bool:
    """Every panel the test checks shows what the traffic left behind."""
    threshold_moved = any(d["kind"] == "threshold" for d in traffic.decisions)
    return (
        bool(page["instances"])
        and len(page["routes"]) >= len(traffic.summaries)
        and page["ttft_points"] > 0
        and page["itl_points"] > 0
        and (not threshold_moved or page["markers"] > 0)
    )

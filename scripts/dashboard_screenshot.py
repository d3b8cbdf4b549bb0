"""The router dashboard's screenshot in docs/images/dashboard.png (shown in docs/operations.md).

Starts the browser test's deployment (emulated instances behind an API key, a driven
controller; tests/e2e/dashboard_harness.py), sends its traffic, opens `/dashboard` in headless
Chromium (Debian's `chromium` and `chromium-driver`), gives it the key, waits until every panel
shows the traffic and saves a 1280x900 PNG.

Usage: PYTHONPATH=src .venv/bin/python scripts/dashboard_screenshot.py [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

import dashboard_harness as harness  # noqa: E402

from polling import wait_until  # noqa: E402

PAGE_TIMEOUT_S = 90.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "dashboard.png")
    args = parser.parse_args()
    missing = harness.browser_missing()
    if missing is not None:
        print(f"dashboard_screenshot: {missing}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        system = harness.start(Path(tmp))
        try:
            traffic = harness.send_traffic(system)
            driver = harness.open_browser()
            try:
                driver.get(system.url + "/dashboard")
                harness.give_key(driver, harness.API_KEY)
                wait_until(
                    lambda: harness.shows_traffic(harness.read_page(driver), traffic),
                    PAGE_TIMEOUT_S,
                    "the panels to show the traffic",
                    0.5,
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out))
            finally:
                driver.quit()
        finally:
            system.launcher.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bounded waits for the tests: poll a condition until it holds, or fail naming what was awaited
once a generous deadline has passed. Tests wait this way for another thread, process or event
loop instead of sleeping a fixed time, which assumes an idle machine. Importable from any test
module (pytest puts `tests/`, the folder of the top conftest, on `sys.path`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

WAIT_TIMEOUT_S = 30.0  # long enough for a loaded two-core machine; a pass never waits this long
POLL_PERIOD_S = 0.01


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    period_s: float = POLL_PERIOD_S,
) -> None:
    """Poll `condition` from this thread until it is true; fail if it is not within `timeout_s`."""
    give_up_at = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up_at, f"still waiting for {what} after {timeout_s:g} s"
        time.sleep(period_s)


async def until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    period_s: float = POLL_PERIOD_S,
) -> None:
    """`wait_until` on an event loop: the loop runs other tasks between polls."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + timeout_s
    while not condition():
        assert loop.time() < give_up_at, f"still waiting for {what} after {timeout_s:g} s"
        await asyncio.sleep(period_s)

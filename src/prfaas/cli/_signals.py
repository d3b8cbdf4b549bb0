"""SIGTERM as a clean stop for the commands that supervise services (`prfaas up`, with or
without Ray): the handler raises KeyboardInterrupt, so the command's `finally` stops every
child; a second SIGTERM is ignored and cannot cut that stop short."""

from __future__ import annotations

import signal
from typing import Any


def stop_on_sigterm() -> None:
    """Turn the next SIGTERM into KeyboardInterrupt (call again after a library replaced it)."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)

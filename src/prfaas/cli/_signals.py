"""SIGTERM as a clean stop for the commands that supervise services (`prfaas up`, with or
without Ray): the handler raises KeyboardInterrupt, so `stop_at_exit` stops every child; a
second SIGTERM is ignored and cannot cut that stop short. Ctrl-C (SIGINT) raises
KeyboardInterrupt too, also where the process inherited SIGINT ignored (a background job of a
shell without job control, where Python leaves it ignored): the services' own servers handle
SIGINT themselves, so a supervisor that ignored it would see them exit and report an error."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Stoppable(Protocol):
    """A launcher of services: `stop` ends every service it started."""

    def stop(self) -> None: ...


def stop_on_sigterm() -> None:
    """Turn the next SIGTERM into KeyboardInterrupt (call again after a library replaced it)."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def stop_at_exit(launcher: Stoppable) -> Iterator[None]:
    """Run the block with SIGTERM as Ctrl-C; either ends it with `prfaas up: stopping` on stderr
    (and no error), and `launcher` stops however the block ends."""
    stop_on_sigterm()
    try:
        yield
    except KeyboardInterrupt:
        print("prfaas up: stopping", file=sys.stderr)
    finally:
        launcher.stop()

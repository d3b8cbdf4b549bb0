"""Regenerate docs/results.md and docs/img/sim_*.png: the simulator's "Beyond the paper" runs.

Usage: PYTHONPATH=src .venv/bin/python scripts/sim_results.py --trace PATH
       [--out-md docs/results.md]

Every number in the generated page comes from a `prfaas sim ... --json` command that this script
runs through `prfaas.cli.main` and prints above the table it fills (seeded, deterministic), so
each table reruns from the commands printed above it. Section 6 replays the Mooncake conversation
trace named by `--trace` (not part of the repository; the page says where to get it). Whatever
follows the last section this script writes (a section someone appended by hand) is kept as it is.

The sections are in sim_results_capacity.py (1-3) and sim_results_dynamics.py (4-7), the page's
pieces in sim_results_page.py and its prose in sim_results_text.py.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from pathlib import Path

import sim_results_capacity as capacity
import sim_results_dynamics as dynamics
from sim_results_page import IMG, Commands, save, table
from sim_results_text import INTRO, NOTES

__all__ = ["IMG", "save", "table"]  # the page's helpers, also used by sim_controller_results.py

SECTIONS: list[Callable[[Commands], str]] = [
    capacity.fluid_limit,
    capacity.queueing,
    capacity.bandwidth,
    dynamics.link_drop,
    dynamics.burstiness,
    dynamics.mooncake,
    dynamics.h20_curve,
]

TITLES = (
    capacity.FLUID_LIMIT_TITLE,
    capacity.QUEUEING_TITLE,
    capacity.BANDWIDTH_TITLE,
    dynamics.LINK_DROP_TITLE,
    dynamics.BURSTINESS_TITLE,
    dynamics.MOONCAKE_TITLE,
    dynamics.H20_CURVE_TITLE,
)


def kept_tail(path: Path) -> str:
    """What follows this script's sections in the existing page: from the first level-2 heading
    after them that this script does not write (e.g. a section appended by hand)."""
    if not path.is_file():
        return ""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    seen_last = False
    for k, line in enumerate(lines):
        heading = line.rstrip("\n")
        if heading == TITLES[-1]:
            seen_last = True
        elif seen_last and heading.startswith("## ") and heading not in TITLES:
            return "".join(lines[k:])
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-md", default="docs/results.md")
    parser.add_argument(
        "--trace",
        type=Path,
        required=True,
        help="the Mooncake conversation trace (conversation_trace.jsonl) for section 6",
    )
    args = parser.parse_args()
    if not args.trace.is_file():
        parser.error(f"--trace {args.trace}: no such file")
    out = Path(args.out_md)
    cmds = Commands(args.trace)
    parts = [INTRO.format(python=platform.python_version())]
    for build in SECTIONS:
        print(f"running {build.__name__}", flush=True)
        parts.append(build(cmds))
        if build.__name__ != "mooncake":
            parts.append(NOTES.get(build.__name__, ""))
    text = "\n\n".join(p for p in parts if p).rstrip() + "\n"
    tail = kept_tail(out)  # read last: the page may have changed during the runs
    out.write_text(text + ("\n" + tail if tail else ""), encoding="utf-8")
    print(f"wrote {out} and {IMG}/sim_*.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared output helpers for subcommands: `--json` flag, JSON printing, plain tables, and checks
that an output directory can be written before a long run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prfaas.errors import UserError


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print results as JSON on stdout")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Right-aligned plain-text table; cells are converted with str()."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def prepare_output_dir(directory: str, flag: str) -> None:
    """Create `directory` (and its parents) now, so a bad path fails before a long run."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag} {directory}: not a directory") from None
    except OSError as exc:
        raise UserError(f"{flag} {directory}: cannot create: {exc.strerror or exc}") from None
    check_writable_dir(directory, flag)


def check_writable_dir(directory: str, flag: str) -> None:
    """UserError unless `directory` is an existing directory this process may write into."""
    path = Path(directory)
    if not path.is_dir():
        raise UserError(f"{flag}: {directory} is not an existing directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: {directory} is not writable")

"""The `prfaas` command line: one subcommand per module in this package, imported lazily.

Each subcommand module defines `register(subparsers)` (flags only, light imports) and a handler
that does the heavy imports, so `prfaas kv` or `prfaas sim` never loads torch. A `UserError`
raised anywhere becomes one line on stderr and exit status 2; so does a usage error, named after
the (sub)command whose flags it concerns. `main` returns the exit status; it does not raise
SystemExit, even for `--help` and `--version`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from prfaas import __version__
from prfaas.errors import UserError

# subcommand name -> module under prfaas.cli that registers it
COMMANDS: dict[str, str] = {
    "kv": "prfaas.cli.kv",
    "plan": "prfaas.cli.plan",
    "sim": "prfaas.cli.sim",
    "verify": "prfaas.cli.verify",
    "bench": "prfaas.cli.bench",
    "router, prefill, decode, up": "prfaas.cli.serve",  # the live services
    "demo": "prfaas.cli.demo",
    "status": "prfaas.cli.status",
    "testbed": "prfaas.cli.testbed",
    "profile": "prfaas.cli.profile",
    "doctor": "prfaas.cli.doctor",
}


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, `PROG: error: MESSAGE`, and exit status 2.

    Arguments it does not know are its own error: a subcommand's unknown flag is reported by
    that subcommand, not passed up to the top-level parser.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="prfaas",
        description="Prefill-as-a-Service: plan, simulate and serve cross-datacenter PD "
        "disaggregation for hybrid-attention models.",
    )
    parser.add_argument("--version", action="version", version=f"prfaas {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=CommandParser
    )
    for module_name in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (2), or --help / --version (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        status = int(args.handler(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe is then caught below
        return status
    except UserError as exc:
        print(f"prfaas {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prfaas {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _stdout_closed()


def _one_line(message: str) -> str:
    """A message of several lines (e.g. every problem of a topology) joined into one."""
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())


def _stdout_closed() -> int:
    """The reader of stdout went away (`prfaas plan | head -1`): it has read all it wanted, so
    exit quietly with status 0, as `head`'s upstream commands conventionally do. Pointing stdout
    at /dev/null keeps the interpreter's final flush from failing again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0

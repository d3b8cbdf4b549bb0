"""The `prfaas` command line: one subcommand per module in this package, imported lazily.

Each subcommand module defines `register(subparsers)` (flags only, light imports) and a handler
that does the heavy imports, so `prfaas kv` or `prfaas sim` never loads torch. A `UserError`
raised anywhere becomes one line on stderr and exit status 2; argparse errors exit 2 as well.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prfaas",
        description="Prefill-as-a-Service: plan, simulate and serve cross-datacenter PD "
        "disaggregation for hybrid-attention models.",
    )
    parser.add_argument("--version", action="version", version=f"prfaas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"prfaas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prfaas {args.command}: interrupted", file=sys.stderr)
        return 130

"""The results page's pieces (`scripts/sim_results.py`): the `prfaas` commands run in-process and
shown above each table, the Markdown table, the figures under docs/img, and the reading of one
deployment's `prfaas sim --json` result."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from prfaas.cli import main as prfaas_main

KINDS = ("prfaas", "homogeneous", "naive")
IMG = Path("docs/img")
# decisions where the policy's offload-delay rule kept a long request local
VETO_RULES = ("link-backlog -> pd_prefill", "prfaas-delay -> pd_prefill")
TRACE_NAME = "conversation_trace.jsonl"  # the name the page shows (Mooncake's file name)


class Commands:
    """Runs `prfaas ...` commands in-process and remembers them, as the page will print them."""

    def __init__(self, trace_path: Path) -> None:
        self.trace_path = trace_path
        self.shown: list[str] = []

    def run(self, *flags: str) -> dict[str, Any]:
        """`prfaas FLAGS --json`; TRACE in the flags stands for the trace named by `--trace`."""
        argv = [str(self.trace_path) if f == "TRACE" else f for f in (*flags, "--json")]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = prfaas_main(argv)
        if status != 0:
            raise SystemExit(f"prfaas {shlex.join(argv)} exited with {status}")
        shown = [TRACE_NAME if f == "TRACE" else f for f in (*flags, "--json")]
        self.shown.append("prfaas " + shlex.join(shown))
        result: dict[str, Any] = json.loads(out.getvalue())
        return result

    def block(self) -> str:
        """The commands run since the last block, as a fenced code block."""
        text = "\n".join(["```", *self.shown, "```"])
        self.shown = []
        return text


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.2f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save(fig: Any, name: str) -> str:
    IMG.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=110)
    plt.close(fig)
    return f"![{name}](img/{name})"


def bar_chart(fig: Any, ax: Any, ylabel: str, img_name: str) -> str:
    """Finish a bar chart (y label, legend, y grid) and save it."""
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, img_name)


def p99_curves(
    xs: Sequence[float], curves: dict[str, list[float]], xlabel: str, img_name: str, log_x: bool
) -> str:
    """TTFT p99 (log scale) of each curve against `xs`, saved as `img_name`."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, ys in curves.items():
        ax.plot(xs, ys, marker="o", label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("TTFT p99 (s)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, img_name)


def section(title: str, cmds: Commands, *parts: str) -> str:
    return "\n\n".join([title, cmds.block(), *parts])


def q(r: dict[str, Any], key: str, stat: str, scale: float = 1.0) -> float:
    value = r[key][stat]
    return math.nan if value is None else value * scale


def split(r: dict[str, Any]) -> str:
    return "/".join(str(n) if n else "-" for n in r["split"])


def vetoes(r: dict[str, Any]) -> str:
    """Offloads the policy turned down, as 'link-backlog / prfaas-delay' decision counts."""
    return " / ".join(str(r["route_reasons"].get(rule, 0)) for rule in VETO_RULES)

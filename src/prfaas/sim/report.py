"""Plots of simulation results (matplotlib, imported lazily; the only module that plots).

Takes the JSON-ready dicts `prfaas sim` prints, so plots can be remade from saved output.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(
    plt: Any, fig: Any, ax: Any, path: Path, title: str, ylabel: str, grid_axis: str
) -> Path:
    """Label, grid and legend the axes, then save the figure to `path` and close it."""
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis=grid_axis, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_egress(results: Mapping[str, Any], path: Path, title: str) -> Path:
    """Mean egress per time bin of every run that used the link."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, r in results.items():
        series = r["egress"]["series"]
        if r["egress"]["mean_gbps"] > 0:
            ax.step(
                [b["start_s"] for b in series],
                [b["egress_gbps"] for b in series],
                where="post",
                label=label,
            )
    ax.set_xlabel("simulated time (s)")
    return _finish(plt, fig, ax, path, title, "PrfaaS egress (Gbps, bin mean)", grid_axis="both")


def plot_ttft(results: Mapping[str, Any], path: Path, title: str) -> Path:
    """TTFT p50 / p90 / p99 per run, grouped bars."""
    plt = _pyplot()
    labels = list(results)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels) + 2), 3.5))
    width = 0.27
    for k, q in enumerate(("p50", "p90", "p99")):
        values = [results[label]["ttft_s"][q] or 0.0 for label in labels]
        ax.bar([i + (k - 1) * width for i in range(len(labels))], values, width, label=q)
    ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    return _finish(plt, fig, ax, path, title, "TTFT (s)", grid_axis="y")


def plot_max_rate(results: Mapping[str, Any], path: Path, title: str) -> Path:
    """Simulated max stable rate next to the model's Λ_max per deployment."""
    plt = _pyplot()
    labels = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(labels))
    ax.bar(
        [x - 0.2 for x in xs],
        [results[k]["model_lambda_max"] for k in labels],
        0.4,
        label="model Λ_max",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [results[k]["max_rate"] for k in labels],
        0.4,
        label="simulated max rate",
    )
    ax.set_xticks(list(xs), labels)
    return _finish(plt, fig, ax, path, title, "requests/s", grid_axis="y")


def write_plots(
    results: Mapping[str, Any], out_dir: str | Path, *, is_max_rate: bool
) -> list[Path]:
    """The standard plots of one `prfaas sim` invocation, as sim_*.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_max_rate:
        return [plot_max_rate(results, out / "sim_max_rate.png", "Max stable rate: sim vs model")]
    return [
        plot_egress(results, out / "sim_egress.png", "PrfaaS egress over time"),
        plot_ttft(results, out / "sim_ttft.png", "TTFT percentiles"),
    ]

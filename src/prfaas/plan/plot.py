"""The paper's Figure 5 for a plan: Λ_max against the threshold t and against the PD split N_p.

matplotlib is imported here only, lazily, with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from prfaas.errors import UserError
from prfaas.plan.search import PlanResult, SweepPoint, rank_point

THRESHOLD_FILE = "fig5_threshold.png"
SPLIT_FILE = "fig5_split.png"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'prfaas[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_split(sweep: tuple[SweepPoint, ...]) -> dict[int, list[SweepPoint]]:
    groups: dict[int, list[SweepPoint]] = defaultdict(list)
    for s in sweep:
        groups[s.num_pd_p].append(s)
    return dict(sorted(groups.items()))


def _plot_threshold(plt: Any, result: PlanResult, path: Path, max_tokens: float) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    best = result.prfaas
    for n_p, points in _by_split(result.sweep).items():
        kept = [s.point for s in points if s.point.threshold_tokens <= max_tokens]
        xs = [p.threshold_tokens / 1000 for p in kept]
        style = {"linewidth": 2.2} if n_p == best.num_pd_p else {"linewidth": 1, "alpha": 0.6}
        n_d = (best.num_pd_p or 0) + best.num_pd_d - n_p
        label = f"N_p/N_d = {n_p}/{n_d}"
        ax.plot(xs, [p.lambda_max_per_s for p in kept], label=label, **style)
    t_best = best.point.threshold_tokens / 1000
    ax.axvline(t_best, color="gray", linestyle="--", linewidth=1)
    ax.annotate(
        f"t = {t_best:.1f}K, Λ_max = {best.point.lambda_max_per_s:.2f}",
        (t_best, best.point.lambda_max_per_s),
        textcoords="offset points",
        xytext=(10, -14),
    )
    homo = result.homogeneous.point.lambda_max_per_s
    ax.axhline(homo, color="black", linestyle=":", linewidth=1, label="homogeneous PD")
    ax.set_xlabel("threshold t (K tokens)")
    ax.set_ylabel("Λ_max (req/s)")
    ax.set_title(f"PrfaaS-PD throughput vs threshold (N_prfaas = {best.num_prfaas})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_split(plt: Any, result: PlanResult, path: Path) -> None:
    best_per_split = {
        n_p: max(points, key=lambda s: rank_point(s.point))
        for n_p, points in _by_split(result.sweep).items()
    }
    n_ps = list(best_per_split)
    points = [best_per_split[n].point for n in n_ps]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(n_ps, [p.lambda_max_per_s for p in points], "o-", linewidth=2, label="Λ_max (best t)")
    ax.plot(
        n_ps,
        [p.theta_prfaas_per_s + p.theta_pd_p_per_s for p in points],
        "s--",
        label="Θ_prfaas + Θ_pd-p",
    )
    ax.plot(n_ps, [p.theta_pd_d_per_s for p in points], "^--", label="Θ_pd-d")
    ax.set_xlabel("N_p (PD-P instances; N_d = rest of the PD cluster)")
    ax.set_ylabel("req/s")
    ax.set_title("PrfaaS-PD throughput vs PD split (Eq. 8 balance)")
    ax.set_xticks(n_ps)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_figure5(result: PlanResult, out_dir: str | Path, max_tokens: float) -> list[Path]:
    """Write the two panels of Figure 5 into out_dir; returns the paths written."""
    plt = _pyplot()
    directory = Path(out_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create plot directory {directory}: {exc.strerror}") from None
    paths = [directory / THRESHOLD_FILE, directory / SPLIT_FILE]
    _plot_threshold(plt, result, paths[0], max_tokens)
    _plot_split(plt, result, paths[1])
    return paths

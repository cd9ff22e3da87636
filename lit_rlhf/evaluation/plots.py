"""The Figure-1 style plot: each policy's win rate against the baseline, with 95% intervals and the 50% line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plot_win_rates(
    results: Mapping[str, Mapping[str, Any]],
    baseline: str,
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Write a PNG of the win rate of each policy against ``baseline`` (points with 95% error bars).

    The judge's win rate is drawn filled; the reward model's, when present, hollow beside it (over-optimisation
    shows as the RM's rate running ahead of the judge's). A policy without a figure is left out of that series.

    Args:
        results: Policy name -> figures, as :func:`lit_rlhf.evaluation.evaluate` returns them.
        baseline: The policy every other one was compared with.
        path: Where the PNG goes.
        title: The plot's title; a default names the baseline.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in tests, on servers and under DDP
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 1.5), 3.6), dpi=120)
    series = [("win_rate", "judge", "o", "C0", -0.08), ("rm_win_rate", "reward model", "s", "C1", 0.08)]
    for key, label, marker, color, shift in series:
        xs, ys, err_low, err_high = [], [], [], []
        for i, name in enumerate(names):
            rate = results[name].get(key)
            if rate is None:
                continue
            low, high = results[name].get(f"{key}_ci95") or (rate, rate)
            xs.append(i + shift)
            ys.append(rate)
            err_low.append(rate - low)
            err_high.append(high - rate)
        if not xs:
            continue
        face = color if key == "win_rate" else "white"
        ax.errorbar(xs, ys, yerr=[err_low, err_high], fmt=marker, color=color, mfc=face, capsize=4, label=label)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel(f"win rate against {baseline}")
    ax.set_title(title or f"Win rate against {baseline} (95% intervals)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["plot_win_rates"]

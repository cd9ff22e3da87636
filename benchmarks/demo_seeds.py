"""The demo's figures over several seeds: the median and the range, as the README reports them.

    python benchmarks/demo_seeds.py --seeds 0,1,2                       # runs runs/demo-seed{0,1,2}, ~6 min each
    python benchmarks/demo_seeds.py --seeds 0,1,2 --config configs/pipeline/demo.yaml \\
        --config configs/pipeline/control.yaml --name control           # the control world, the same way

Each seed is a whole ``lit-rlhf pipeline`` run in its own process (``--seed`` seeds the world, so each seed is
another world drawn from the same rules, and every stage), named ``<name>-seed<N>``; a finished run is reused (the
pipeline skips finished stages). Then it prints, per policy, the median and the range over the seeds of the panel
win rate against SFT, wins / ties / losses, the win rate on constrained and unconstrained prompts, the response
metrics, KL and corpus LM loss, and the wall time of each run; ``--json`` writes them and ``--plot`` draws Figure 1
over the seeds (with ``--control_json``, the control's beside it):

    python benchmarks/demo_seeds.py --seeds 0,1,2 --json runs/demo_seeds.json \
        --plot docs/win_rates_demo.png --control_json runs/control_seeds.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

FIGURES = (
    "win_rate",
    "wins",
    "ties",
    "losses",
    "constraint_following_rate",
    "preamble_rate",
    "padding_rate",
    "exact_match",
    "toxic_rate",
    "invented_answer_rate",
    "kl_to_sft",
    "lm_loss",
    "rm_win_rate",
)
GROUPS = {"constrained": "True", "unconstrained": "False"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--config", action="append", help="pipeline configs, in order (default: the demo's)")
    parser.add_argument("--name", default="demo", help="runs are named <name>-seed<N>")
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--plot", help="draw the median win rates with their range over the seeds here (PNG)")
    parser.add_argument("--control_json", help="with --plot: a control's --json, drawn beside the figures")
    return parser.parse_args(argv)


def run_seed(configs: list[str], name: str, seed: int, runs_dir: str) -> Path:
    """Run (or finish) the pipeline for ``seed``; its run directory."""
    cmd = [sys.executable, "-m", "lit_rlhf.cli", "pipeline"]
    for config in configs:
        cmd += ["-c", config]
    cmd += ["--seed", str(seed), "--name", f"{name}-seed{seed}", "--runs_dir", runs_dir, "--wandb", "false"]
    cmd += ["--trainer.enable_progress_bar", "false"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return Path(runs_dir) / f"{name}-seed{seed}"


def seed_figures(root: Path) -> dict[str, Any]:
    """One run's figures by policy (and its wall time)."""
    results = json.loads((root / "evaluate" / "results.json").read_text())
    stages = json.loads((root / "pipeline.json").read_text())["stages"]
    figures: dict[str, Any] = {"wall_s": sum(s.get("seconds") or 0 for s in stages.values())}
    curve = root / "overoptimization" / "overoptimization.json"
    if curve.is_file():  # the over-optimisation fits: method -> score -> {alpha, beta, r2, peak_kl, ...}
        figures["overoptimization_fits"] = json.loads(curve.read_text())["fits"]
    for policy, r in results.items():
        if policy == "judge":
            continue
        row = {k: r.get(k) for k in FIGURES}
        for label, value in GROUPS.items():
            group = (r.get("by_constrained") or {}).get(value) or {}
            row[f"win_rate_{label}"] = group.get("win_rate")
        figures[policy] = row
    return figures


def summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max over the seeds of every figure of every policy."""
    out: dict[str, Any] = {}
    for policy in [p for p in per_seed[0] if p not in ("wall_s", "overoptimization_fits")]:
        out[policy] = {}
        for key in per_seed[0][policy]:
            values = [s[policy][key] for s in per_seed if s[policy].get(key) is not None]
            if values:
                out[policy][key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    walls = [s["wall_s"] for s in per_seed]
    out["wall_s"] = {"median": statistics.median(walls), "min": min(walls), "max": max(walls)}
    return out


def _pct(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "-"
    return f"{100 * stat['median']:.1f}% [{100 * stat['min']:.1f}, {100 * stat['max']:.1f}]"


def print_table(figures: dict[str, Any], n_seeds: int) -> None:
    print(f"median [min, max] over {n_seeds} seeds; wall {figures['wall_s']['median']:.0f} s median")
    header = "policy         win rate              constrained           unconstrained         W/T/L (median)"
    print(header + "     constraint following   preamble   KL to SFT  LM loss")
    for policy, f in figures.items():
        if policy == "wall_s":
            continue
        wtl = "/".join(str(round(f[k]["median"])) if k in f else "-" for k in ("wins", "ties", "losses"))
        lm = f"{f['lm_loss']['median']:.2f}" if "lm_loss" in f else "-"
        kl = f"{f['kl_to_sft']['median']:.2f}" if "kl_to_sft" in f else "-"
        print(
            f"{policy:14s} {_pct(f.get('win_rate')):21s} {_pct(f.get('win_rate_constrained')):21s} "
            f"{_pct(f.get('win_rate_unconstrained')):21s} {wtl:18s} {_pct(f.get('constraint_following_rate')):22s} "
            f"{_pct(f.get('preamble_rate')):10s} {kl:10s} {lm}"
        )


def plot_seeds(figures: dict[str, Any], path: str, control: dict[str, Any] | None = None, n_seeds: int = 3) -> None:
    """Figure 1 over seeds: each policy's median panel win rate against SFT, the bar from the lowest to the highest
    seed; the control world's beside it when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = [p for p in figures if p not in ("wall_s", "sft")]
    fig, ax = plt.subplots(figsize=(1.3 * len(policies) + 2.0, 3.6), dpi=120)
    series = [("demo world", figures, "o", "C0", -0.1)]
    if control is not None:
        series.append(("control world (writers without habits)", control, "s", "C2", 0.1))
    for label, source, marker, color, shift in series:
        xs, ys, low, high = [], [], [], []
        for i, policy in enumerate(policies):
            stat = (source.get(policy) or {}).get("win_rate")
            if stat is None:
                continue
            xs.append(i + shift)
            ys.append(stat["median"])
            low.append(stat["median"] - stat["min"])
            high.append(stat["max"] - stat["median"])
        ax.errorbar(xs, ys, yerr=[low, high], fmt=marker, color=color, capsize=4, label=label)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(policies)), policies)
    ax.set_xlim(-0.6, len(policies) - 0.4)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("panel win rate against SFT")
    ax.set_title(f"Win rate against SFT: median and range over {n_seeds} seeds")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configs = args.config or ["configs/pipeline/demo.yaml"]
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = [seed_figures(run_seed(configs, args.name, seed, args.runs_dir)) for seed in seeds]
    figures = summary(per_seed)
    print_table(figures, len(seeds))
    if args.json:
        command = "python benchmarks/demo_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
        payload = {"command": command, "configs": configs, "seeds": seeds, "per_seed": per_seed, "summary": figures}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        control = json.loads(Path(args.control_json).read_text())["summary"] if args.control_json else None
        plot_seeds(figures, args.plot, control, len(seeds))


if __name__ == "__main__":
    main()

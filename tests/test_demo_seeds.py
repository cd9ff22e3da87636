"""benchmarks/demo_seeds.py: the median and range over seeds, and the Figure-1 plot over seeds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_demo_seeds", ROOT / "benchmarks" / "demo_seeds.py")
demo_seeds = importlib.util.module_from_spec(_spec)
sys.modules["bench_demo_seeds"] = demo_seeds
_spec.loader.exec_module(demo_seeds)


def _run(root: Path, ppo_win: float, wins: int, seconds: float) -> Path:
    (root / "evaluate").mkdir(parents=True)
    ppo = {"win_rate": ppo_win, "wins": wins, "ties": 0, "losses": 10 - wins, "constraint_following_rate": 0.6,
           "by_constrained": {"True": {"win_rate": ppo_win + 0.1}, "False": {"win_rate": ppo_win - 0.1}}}  # fmt: skip
    results = {"sft": {"win_rate": 0.5, "constraint_following_rate": 0.2}, "ppo": ppo, "judge": {"name": "panel"}}
    (root / "evaluate" / "results.json").write_text(json.dumps(results))
    stages = {"sft": {"seconds": seconds / 2}, "ppo": {"seconds": seconds / 2}}
    (root / "pipeline.json").write_text(json.dumps({"stages": stages}))
    return root


def test_median_and_range_over_seeds_and_the_plot(tmp_path, capsys):
    runs = [
        _run(tmp_path / f"s{i}", w, n, t) for i, (w, n, t) in enumerate([(0.6, 6, 300), (0.5, 5, 400), (0.7, 7, 350)])
    ]
    per_seed = [demo_seeds.seed_figures(r) for r in runs]
    assert "judge" not in per_seed[0] and per_seed[1]["wall_s"] == 400
    figures = demo_seeds.summary(per_seed)
    assert figures["ppo"]["win_rate"] == {"median": 0.6, "min": 0.5, "max": 0.7}
    assert figures["ppo"]["wins"] == {"median": 6, "min": 5, "max": 7}
    assert figures["ppo"]["win_rate_constrained"]["median"] == 0.7  # from by_constrained["True"]
    assert figures["ppo"]["win_rate_unconstrained"]["min"] == 0.4
    assert "win_rate_constrained" not in figures["sft"]  # no groups: left out, not zero
    assert figures["wall_s"] == {"median": 350, "min": 300, "max": 400}
    demo_seeds.print_table(figures, 3)
    assert "60.0% [50.0, 70.0]" in capsys.readouterr().out
    demo_seeds.plot_seeds(figures, str(tmp_path / "seeds.png"), control=figures, n_seeds=3)
    assert (tmp_path / "seeds.png").read_bytes()[:4] == b"\x89PNG"

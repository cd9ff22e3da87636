"""``table.txt`` fits 120 columns: the win rates first, the other metrics under short headers with a legend (as many
tables as it takes), then the groups; every figure is still in results.json."""

from __future__ import annotations

from lit_rlhf.evaluation.evaluate import METRIC_HEADERS, TABLE_WIDTH, metric_chunks, render_table
from lit_rlhf.world.labelers import RESPONSE_METRICS

POLICIES = ("base", "base_prompted", "sft", "dpo", "ppo", "ppo_ptx", "best_of_16", "a_long_policy_name_rloo")


def demo_like_results() -> dict[str, dict]:
    """Every figure the demo's evaluation reports, for eight policies, grouped by constraint."""
    results = {}
    for i, name in enumerate(POLICIES):
        figures = {"n": 600, "win_rate": 0.5 + i / 100, "win_rate_ci95": [0.46 + i / 100, 0.54 + i / 100],
                   "wins": 219, "ties": 242, "losses": 139, "rm_win_rate": 0.66, "rm_win_rate_ci95": [0.62, 0.7],
                   "rm_wins": 390, "rm_ties": 12, "rm_losses": 198, "response_tokens": 6.25, "eos_rate": 0.99,
                   "kl_to_sft": 1.113, "lm_loss": 8.09, "truthfulqa_mc1": 0.31, "gsm8k_accuracy": None,
                   "fewshot_accuracy": 0.2}  # fmt: skip
        figures |= {metric: 0.123 for metric in RESPONSE_METRICS}
        group = {k: figures[k] for k in ("n", "win_rate", "win_rate_ci95", "wins", "ties", "losses", "rm_win_rate",
                                         "rm_win_rate_ci95", "rm_wins", "rm_ties", "rm_losses")}  # fmt: skip
        figures["by_constrained"] = {"True": group, "False": group}
        results[name] = figures
    return results


def test_the_demo_table_fits_in_120_columns_and_shows_every_figure_once():
    text = render_table(demo_like_results(), "sft", print_table=False)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= TABLE_WIDTH, max(lines, key=len)
    assert not any(line.rstrip().endswith("…") or "…" in line for line in lines)  # no header cut
    assert "56.0% [52.0, 60.0]" in text and "219/242/139" in text  # ppo's win rate, interval and counts, one line
    for metric in ("constraint_following_rate", "toxic_rate_respectful", "lm_loss", "rm_win_rate"):
        header, meaning = METRIC_HEADERS[metric]
        assert f"  {header}: {meaning}" in text  # the legend explains each short header
    assert "0.123" not in text  # every share as a percentage (toxic_rate_plain, exact_match too)
    assert "GSM8K" not in text  # measured for nobody: no column
    assert "ppo by constrained" in text and "sft by constrained" not in text
    # The win-rate table comes first, with the six columns the issue names.
    first = text[: text.index("Metrics")]
    for header in ("policy", "win rate [95%]", "W/T/L", "KL to sft", "resp. tokens"):
        assert header in first
    assert "LM loss" not in first


def test_metric_columns_pack_into_tables_no_wider_than_the_limit():
    columns = [(f"m{i}", ["12.3%"] * 3) for i in range(30)]  # each 8 wide with its padding
    chunks = metric_chunks(columns, first=20, width=60)  # (60 - 21) // 8 = 4 columns a table
    assert chunks[0] == [0, 1, 2, 3] and sum(chunks, []) == list(range(30)) and len(chunks) == 8
    assert metric_chunks([("a_very_wide_header" * 5, ["1"])], first=20, width=60) == [[0]]  # too wide alone: kept

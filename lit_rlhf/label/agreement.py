"""Inter-labeler agreement on the overlap tasks, in plain Python.

* Pairwise agreement (Stiennon et al. 2020; InstructGPT's 72.6 +- 1.5%): over every pair of completions that two
  labelers both ordered strictly, the share they ordered alike. A pair either labeler tied is left out, and the
  share left out is shown. Chance is 50%.
* Kendall tau-b per shared prompt and pair of labelers (ties corrected), averaged.
* Both per labeler (against everyone who shares their tasks) and overall, with a 95% percentile interval from a
  bootstrap over prompts: the pairs of one prompt are not independent, so prompts are resampled, not pairs.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lit_rlhf.label import db

Ranks = Sequence[int]
"""``ranks[i]``: the rank of completion ``i`` (0 = best); equal ranks are a tie."""


def ranks_of(ranking: Sequence[int | Sequence[int]]) -> list[int]:
    """The rank of each completion from a ``ranking`` (indices best first, a tie group as a list)."""
    groups = [g if isinstance(g, list | tuple) else [g] for g in ranking]
    ranks = [0] * sum(len(g) for g in groups)
    for r, group in enumerate(groups):
        for i in group:
            ranks[i] = r
    return ranks


def pair_counts(a: Ranks, b: Ranks) -> tuple[int, int, int]:
    """``(agree, strict, tied)`` over the K choose 2 pairs: pairs both ordered alike, pairs both ordered strictly,
    pairs either tied."""
    agree = strict = tied = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        if a[i] == a[j] or b[i] == b[j]:
            tied += 1
            continue
        strict += 1
        agree += (a[i] < a[j]) == (b[i] < b[j])
    return agree, strict, tied


def kendall_tau_b(a: Ranks, b: Ranks) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_a) (n0 - ties_b)); NaN when either ranking ties
    everything (scipy.stats.kendalltau gives the same)."""
    concordant = discordant = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, dbb = a[i] - a[j], b[i] - b[j]
        ties_a += da == 0
        ties_b += dbb == 0
        if da * dbb > 0:
            concordant += 1
        elif da * dbb < 0:
            discordant += 1
    n0 = len(a) * (len(a) - 1) // 2
    denominator = math.sqrt((n0 - ties_a) * (n0 - ties_b))
    return (concordant - discordant) / denominator if denominator else math.nan


@dataclass(frozen=True)
class Row:
    """Agreement of one labeler (or ``overall``).

    Attributes:
        prompts: Shared prompts (tasks ranked by this labeler and at least one other).
        pairs: Strictly ordered pairs compared (per pair of labelers).
        agreement: Share of them ordered alike; None without any.
        low, high: 95% bootstrap interval over prompts.
        tie_rate: Share of all shared pairs left out because either side tied.
        tau_b: Mean Kendall tau-b over (prompt, pair of labelers), NaNs left out.
    """

    labeler: str
    prompts: int
    pairs: int
    agreement: float | None
    low: float | None
    high: float | None
    tie_rate: float | None
    tau_b: float | None


def _comparisons(by_task: Mapping[Any, Mapping[str, Ranks]]) -> list[tuple[Any, str, str, int, int, int, float]]:
    out = []
    for task, by_labeler in by_task.items():
        for (la, ra), (lb, rb) in itertools.combinations(sorted(by_labeler.items()), 2):
            out.append((task, la, lb, *pair_counts(ra, rb), kendall_tau_b(ra, rb)))
    return out


def _row(name: str, comparisons: list, n_boot: int, rng: random.Random) -> Row:
    tasks = sorted({c[0] for c in comparisons}, key=str)
    agree, strict, tied = (sum(c[i] for c in comparisons) for i in (3, 4, 5))
    taus = [c[6] for c in comparisons if not math.isnan(c[6])]
    by_task: dict[Any, tuple[int, int]] = {}
    for c in comparisons:
        a, s = by_task.get(c[0], (0, 0))
        by_task[c[0]] = (a + c[3], s + c[4])
    boots = []
    for _ in range(n_boot if tasks else 0):
        sample = [by_task[rng.choice(tasks)] for _ in tasks]
        s = sum(x[1] for x in sample)
        if s:
            boots.append(sum(x[0] for x in sample) / s)
    boots.sort()
    low = boots[int(0.025 * (len(boots) - 1))] if boots else None
    high = boots[int(math.ceil(0.975 * (len(boots) - 1)))] if boots else None
    return Row(
        name,
        len(tasks),
        strict,
        agree / strict if strict else None,
        low,
        high,
        tied / (strict + tied) if strict + tied else None,
        sum(taus) / len(taus) if taus else None,
    )


def agreement(by_task: Mapping[Any, Mapping[str, Ranks]], n_boot: int = 1000, seed: int = 0) -> list[Row]:
    """One row per labeler and a last ``overall`` row, from each task's ranks by labeler (tasks ranked by one
    labeler count for nothing)."""
    comparisons = _comparisons({t: r for t, r in by_task.items() if len(r) >= 2})
    rng = random.Random(seed)
    labelers = sorted({c[1] for c in comparisons} | {c[2] for c in comparisons})
    rows = [_row(name, [c for c in comparisons if name in (c[1], c[2])], n_boot, rng) for name in labelers]
    return [*rows, _row("overall", comparisons, n_boot, rng)]


def project_rankings(db_path: str | Path) -> dict[int, dict[str, list[int]]]:
    """Each ranking task's ranks by labeler name, read from the project file (read-only)."""
    conn = db.connect(db_path, readonly=True)
    try:
        names = db.labeler_names(conn)
        out: dict[int, dict[str, list[int]]] = {}
        for row in db.answers(conn):
            if row["kind"] == "ranking":
                out.setdefault(row["task_id"], {})[names[row["labeler_id"]]] = ranks_of(
                    json.loads(row["payload"])["ranking"]
                )
        return out
    finally:
        conn.close()


def table(rows: Sequence[Row]) -> str:
    """The rows as a narrow text table."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [f"{'labeler':<16} {'prompts':>7} {'pairs':>6} {'agree':>7} {'95% interval':>15} {'ties':>6} {'tau-b':>6}"]
    for r in rows:
        interval = "-" if r.low is None else f"{pct(r.low)}-{pct(r.high)}"
        tau = "-" if r.tau_b is None else f"{r.tau_b:.3f}"
        lines.append(
            f"{r.labeler[:16]:<16} {r.prompts:>7} {r.pairs:>6} {pct(r.agreement):>7} {interval:>15} "
            f"{pct(r.tie_rate):>6} {tau:>6}"
        )
    return "\n".join(lines)


def as_json(rows: Sequence[Row]) -> dict[str, Any]:
    return {
        "method": "pairwise agreement over shared strictly ordered pairs (ties left out, tie_rate shown); "
        "Kendall tau-b per shared prompt; 95% percentile bootstrap over prompts",
        "labelers": [asdict(r) for r in rows if r.labeler != "overall"],
        "overall": asdict(rows[-1]),
    }

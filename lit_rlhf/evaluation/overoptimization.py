"""Reward-model over-optimisation (Gao et al. 2022, "Scaling laws for reward model overoptimization").

Optimising a learned (proxy) reward model raises the proxy score without bound while the true (gold) score rises,
peaks and falls. ``lit-rlhf overoptimization`` measures both against the distance from the initial policy,
``d = sqrt(KL)``, on held-out prompts, for two ways of optimising:

* **best-of-n** of the SFT policy, n in ``--ns``: N = max(ns) samples per prompt are drawn once (temperature 1) and
  scored by the proxy (``--rm_dir``) and the gold scorer (``--gold``); the figures at each n are expectations over
  every n-subset of the N (:func:`lit_rlhf.evaluation.best_of_n.expected_best_of_n`), and KL = log n - (n-1)/n;
* **RL**: each policy of ``--checkpoints`` (e.g. PPO exported every few iterations) samples one response per prompt
  (temperature 1); its KL to the SFT policy is the mean over prompts of the summed per-token log-ratio on those
  samples; the SFT policy itself is the RL point at d = 0.

Gao et al.'s functional forms are fitted to each curve, relative to the initial policy's score R(0) (the SFT's
mean over its samples): best-of-n ``R(d) - R(0) = d (alpha - beta d)``, RL ``R(d) - R(0) = d (alpha - beta log d)``,
both by least squares on the points with d > 0 (those at d = 0 are 0 on both sides).

Outputs (written atomically into ``--output_dir``): ``overoptimization.json`` (every point, the fits, the settings)
and ``overoptimization.png`` (gold and proxy against sqrt(KL), fits dashed).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lit_rlhf.data.collate import Template
from lit_rlhf.data.records import expand_files
from lit_rlhf.evaluation import metrics as M
from lit_rlhf.evaluation.best_of_n import best_of_n_kl, expected_best_of_n, sample_n
from lit_rlhf.evaluation.evaluate import Policy
from lit_rlhf.evaluation.judges import Judge, RewardModelJudge, import_object, judge_pairs, load_judge
from lit_rlhf.evaluation.prompts import EvalPrompt, load_eval_prompts

log = logging.getLogger(__name__)

RESULTS_FILE = "overoptimization.json"
PLOT_FILE = "overoptimization.png"

Scorer = Callable[[Sequence[EvalPrompt], Sequence[str]], list[float]]
"""``scorer(prompts, responses) -> one score per response``."""


@dataclass(frozen=True)
class OveroptimizationOptions:
    """Which policies, scored by which proxy and gold, on which prompts, with how many samples.

    Args:
        sft: The initial policy, an exported directory: best-of-n samples it and every KL is measured from it.
        rm_dir: The proxy reward model (the one RL was trained against); it also picks best-of-n's sample.
        gold: The gold scorer: an import path 'package.module:fn' to fn(prompts: list[str], responses: list[str])
            -> list[float] (a one-turn prompt as its user text, a longer one in the HH format), e.g.
            'lit_rlhf.world.labelers:true_reward' (the instruction world's hidden quality); or 'rm:DIR', a gold
            reward model.
        prompts_file: Held-out prompts, {"prompt": str} or {"messages": [...]} records; a path, glob or list.
        checkpoints: RL policies, name -> exported directory, e.g. '{iter_10: runs/ppo/hf_iterations/iter_0010,
            ppo: runs/ppo/hf}' (lit-rlhf fit --model.export_every_n_iterations writes them for PPO); the SFT policy
            is always the RL point at KL 0. null: best-of-n only.
        judge: Also each point's win rate against the SFT policy's greedy responses, by this judge (as
            'lit-rlhf evaluate --judge': 'rm:DIR', or an import path such as 'lit_rlhf.world.labelers:panel_judge').
            null: no win rates.
        ns: The n of best-of-n (each >= 1); N = max(ns) samples per prompt are drawn once.
        max_examples: Use at most this many prompts; null: all.
        max_new_tokens: Longest response.
        batch_size: Sequences per generate / forward call.
        seed: Seed of sampling (each prompt and sample its own stream) and of the judge's position swaps.
        template: Prompt template, as in training: 'auto' (the tokenizer's chat template if any) or 'plain' (HH).
        output_dir: Where overoptimization.json and overoptimization.png go; replaced atomically. null: no files.
    """

    sft: str
    rm_dir: str
    gold: str
    prompts_file: str | list[str]
    checkpoints: dict[str, str] | None = None
    judge: str | None = None
    ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    max_examples: int | None = None
    max_new_tokens: int = 64
    batch_size: int = 16
    seed: int = 0
    template: Template = "auto"
    output_dir: str | None = "runs/overoptimization"

    def check(self) -> None:
        """Raise one ValueError listing every problem with the options, before any model is loaded."""
        problems = [f"--sft: {p}" for p in M.policy_dir_problems("sft", self.sft)]
        for name, path in (self.checkpoints or {}).items():
            problems.extend(f"--checkpoints: {p}" for p in M.policy_dir_problems(name, path))
        if "sft" in (self.checkpoints or {}):
            problems.append("--checkpoints has one named 'sft', the name of the SFT policy's own point; rename it")
        problems.extend(M.reward_model_dir_problems(f"--rm_dir {self.rm_dir}", self.rm_dir))
        problems.extend(_gold_problems(self.gold))
        if self.judge is not None and self.judge.startswith("rm:"):
            problems.extend(M.reward_model_dir_problems(f"--judge {self.judge}", self.judge.removeprefix("rm:")))
        try:
            expand_files(self.prompts_file)
        except ValueError as e:
            problems.append(f"--prompts_file: {e}")
        if not self.ns or any(n < 1 for n in self.ns):
            problems.append(f"--ns must be a non-empty list of n >= 1, got {self.ns}")
        if self.max_examples is not None and self.max_examples < 1:
            problems.append(f"--max_examples must be >= 1 or null, got {self.max_examples}")
        for flag in ("max_new_tokens", "batch_size"):
            if getattr(self, flag) < 1:
                problems.append(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        if problems:
            raise ValueError("cannot measure over-optimisation:\n  " + "\n  ".join(problems))


def _gold_problems(spec: str) -> list[str]:
    if spec.startswith("rm:"):
        return M.reward_model_dir_problems(f"--gold {spec}", spec.removeprefix("rm:"))
    try:
        fn = import_object(spec)
    except ValueError as e:
        return [f"--gold {spec!r}: not 'rm:DIR' nor an importable function ({e})"]
    return [] if callable(fn) else [f"--gold {spec!r} is not a function (prompts, responses) -> scores"]


def load_gold(spec: str, *, device: torch.device, batch_size: int = 16, template: Template = "auto") -> Scorer:
    """Resolve ``--gold``: ``rm:DIR`` (a reward model's scores) or an import path to ``fn(prompts, responses)``,
    called with the prompts' text (:attr:`EvalPrompt.text`)."""
    if spec.startswith("rm:"):
        return RewardModelJudge(spec.removeprefix("rm:"), batch_size, template=template, device=device).scores
    fn = import_object(spec)

    def score(prompts: Sequence[EvalPrompt], responses: Sequence[str]) -> list[float]:
        values = [float(v) for v in fn([p.text for p in prompts], list(responses))]
        if len(values) != len(responses):
            raise ValueError(f"--gold {spec}: returned {len(values)} scores for {len(responses)} responses")
        return values

    return score


# --------------------------------------------------------------------------- points


@dataclass(frozen=True)
class CurvePoint:
    """One point of a curve: a policy's KL from the SFT policy and its mean scores.

    Attributes:
        method: ``best_of_n`` or ``rl``.
        name: ``n=<n>`` for best-of-n, the checkpoint's name for RL (``sft`` for the SFT policy).
        kl: KL from the SFT policy, nats per response (best-of-n: log n - (n-1)/n; RL: a Monte-Carlo estimate, which
            can come out slightly negative near the SFT policy).
        gold: Mean gold score.
        proxy: Mean proxy (``--rm_dir``) score.
        win_rate: Share of prompts where the response beats the SFT policy's greedy one (ties half); None unjudged.
        n_prompts: Prompts averaged over.
        n: Best-of-n's n; None for RL.
        path: The RL policy's directory; None for best-of-n.
    """

    method: Literal["best_of_n", "rl"]
    name: str
    kl: float
    gold: float
    proxy: float
    win_rate: float | None
    n_prompts: int
    n: int | None = None
    path: str | None = None

    @property
    def sqrt_kl(self) -> float:
        """d = sqrt(KL), with a negative KL estimate counted as 0."""
        return math.sqrt(max(self.kl, 0.0))

    def record(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sqrt_kl": self.sqrt_kl}


@dataclass(frozen=True)
class Scored:
    """A policy's samples and their scores, per prompt, per sample (the same number of samples for every prompt).

    Attributes:
        proxy: Proxy reward-model scores.
        gold: Gold scores.
        wins: 1 / 0.5 / 0 when the sample beats / ties / loses to the SFT policy's greedy response; None unjudged.
    """

    proxy: list[list[float]]
    gold: list[list[float]]
    wins: list[list[float]] | None


def score_samples(
    prompts: Sequence[EvalPrompt],
    samples: Sequence[Sequence[str]],
    proxy: Scorer,
    gold: Scorer,
    judge: Judge | None = None,
    reference: Sequence[str] | None = None,
    seed: int = 0,
) -> Scored:
    """Score every sample of every prompt by ``proxy`` and ``gold``, and with ``judge`` against ``reference[i]``.

    Args:
        samples: Per prompt, its samples' text (the same count for each prompt).
        reference: Per prompt, the response every sample is judged against (the SFT policy's greedy one).
        seed: Which pairs the judge is shown in swapped order (:func:`judge_pairs`).
    """
    per_prompt = len(samples[0]) if samples else 0
    flat_prompts = [p for p, drawn in zip(prompts, samples, strict=True) for _ in drawn]
    flat = [text for drawn in samples for text in drawn]

    def unflatten(values: list[float]) -> list[list[float]]:
        return [values[i * per_prompt : (i + 1) * per_prompt] for i in range(len(samples))]

    wins = None
    if judge is not None and reference is not None:
        references = [reference[i] for i, drawn in enumerate(samples) for _ in drawn]
        wins = unflatten(judge_pairs(judge, flat_prompts, flat, references, seed))
    return Scored(unflatten(proxy(flat_prompts, flat)), unflatten(gold(flat_prompts, flat)), wins)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def best_of_n_points(scored: Scored, ns: Sequence[int]) -> list[CurvePoint]:
    """Best-of-n's points at each n of ``ns``: each prompt's expectation over every n-subset of its samples (picked by
    the proxy), averaged over prompts."""

    def expected(values: list[list[float]], n: int) -> float:
        return _mean([expected_best_of_n(p, v, n) for p, v in zip(scored.proxy, values, strict=True)])

    points = []
    for n in ns:
        win = expected(scored.wins, n) if scored.wins is not None else None
        points.append(CurvePoint("best_of_n", f"n={n}", best_of_n_kl(n), expected(scored.gold, n),
                                 expected(scored.proxy, n), win, len(scored.proxy), n=n))  # fmt: skip
    return points


def rl_point(name: str, path: str, kl: float, scored: Scored) -> CurvePoint:
    """An RL policy's point: the mean scores of its samples (all of them, over every prompt)."""

    def mean(values: list[list[float]]) -> float:
        return _mean([v for per_prompt in values for v in per_prompt])

    win = mean(scored.wins) if scored.wins is not None else None
    return CurvePoint("rl", name, kl, mean(scored.gold), mean(scored.proxy), win, len(scored.proxy), path=path)


# --------------------------------------------------------------------------- fits


@dataclass(frozen=True)
class Fit:
    """A least-squares fit of ``R(d) - R(0)`` in Gao et al.'s form for one method and score.

    Attributes:
        form: ``best_of_n``: ``d (alpha - beta d)``; ``rl``: ``d (alpha - beta log d)``.
        alpha, beta: The fitted coefficients.
        r2: Coefficient of determination on the fitted points; None with two points (two coefficients pass through
            any two: nothing is left to measure) or when they all have the same score.
        peak_sqrt_kl: The d where the fitted curve peaks: ``alpha / (2 beta)`` (best-of-n, at least 0) or
            ``exp(alpha / beta - 1)`` (RL); None when beta <= 0 (no peak).
        n_points: Points fitted (those with d > 0).
    """

    form: Literal["best_of_n", "rl"]
    alpha: float
    beta: float
    r2: float | None
    peak_sqrt_kl: float | None
    n_points: int

    def __call__(self, d: float) -> float:
        """The fitted ``R(d) - R(0)``."""
        return gao_curve(self.form, d, self.alpha, self.beta)

    def record(self) -> dict[str, Any]:
        peak = self.peak_sqrt_kl
        return {**dataclasses.asdict(self), "peak_kl": None if peak is None else peak**2}


def gao_curve(form: Literal["best_of_n", "rl"], d: float, alpha: float, beta: float) -> float:
    """Gao et al.'s ``R(d) - R(0)``: ``d (alpha - beta d)`` for best-of-n, ``d (alpha - beta log d)`` for RL (0 at
    d = 0, its limit)."""
    if form == "best_of_n":
        return d * (alpha - beta * d)
    return 0.0 if d <= 0 else d * (alpha - beta * math.log(d))


def fit_gao(form: Literal["best_of_n", "rl"], ds: Sequence[float], gains: Sequence[float]) -> Fit | None:
    """Least-squares ``alpha, beta`` of :func:`gao_curve` (linear in them) through the points with d > 0.

    Args:
        ds: Each point's d = sqrt(KL).
        gains: Each point's score minus the initial policy's, R(d) - R(0).

    Returns:
        The fit, or None with fewer than two points at d > 0 (two coefficients).
    """
    import numpy as np

    kept = [(d, g) for d, g in zip(ds, gains, strict=True) if d > 0]
    if len(kept) < 2:
        return None
    d = np.array([k[0] for k in kept], dtype=np.float64)
    y = np.array([k[1] for k in kept], dtype=np.float64)
    second = d * d if form == "best_of_n" else d * np.log(d)
    design = np.stack([d, -second], axis=1)  # R = alpha d - beta (d^2 | d log d)
    (alpha, beta), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = float(((y - design @ np.array([alpha, beta])) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - residual / total if total > 0 and len(kept) > 2 else None
    if beta <= 0:
        peak = None
    elif form == "best_of_n":
        peak = max(0.0, alpha / (2 * beta))
    else:
        peak = math.exp(alpha / beta - 1)
    return Fit(form, float(alpha), float(beta), r2, peak, len(kept))


def fit_curves(points: Sequence[CurvePoint], baseline: Mapping[str, float]) -> dict[str, dict[str, Fit | None]]:
    """Method -> score (``gold``, ``proxy``) -> the Gao fit of that score minus ``baseline[score]`` (the SFT's)."""
    fits: dict[str, dict[str, Fit | None]] = {}
    for method in ("best_of_n", "rl"):
        mine = [p for p in points if p.method == method]
        ds = [p.sqrt_kl for p in mine]
        fits[method] = {
            score: fit_gao(method, ds, [getattr(p, score) - baseline[score] for p in mine])
            for score in ("gold", "proxy")
        }
    return fits


# --------------------------------------------------------------------------- the measurement


def overoptimization(
    options: OveroptimizationOptions,
    *,
    device: str | torch.device | None = None,
    logger: Any | None = None,
    print_table: bool = True,
) -> dict[str, Any]:
    """Measure gold and proxy scores against sqrt(KL) for best-of-n and RL checkpoints, and fit Gao et al.'s forms.

    Args:
        options: What to measure (:class:`OveroptimizationOptions`).
        device: Where the models run; the GPU when there is one, else the CPU, when None.
        logger: A Lightning logger the fits, settings and plot go to.
        print_table: Print the points and fits.

    Returns:
        What ``overoptimization.json`` holds: ``points`` (each :meth:`CurvePoint.record`: method, name, n or path,
        kl, sqrt_kl, gold, proxy, win_rate, n_prompts), ``baseline`` (the SFT policy's mean gold and proxy, R(0)),
        ``fits`` (method -> score -> :meth:`Fit.record` or None) and ``settings``.
    """
    # 1. Check the options; read the prompts; load the scorers.
    options.check()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prompts = load_eval_prompts(options.prompts_file, options.max_examples)
    gen = {"max_new_tokens": options.max_new_tokens, "batch_size": options.batch_size, "template": options.template}
    proxy = RewardModelJudge(options.rm_dir, options.batch_size, template=options.template, device=device).scores
    gold = load_gold(options.gold, device=device, batch_size=options.batch_size, template=options.template)
    judge = load_judge(options.judge, device=device) if options.judge is not None else None
    # 2. The SFT policy: its greedy answers (what the judge compares with), N samples per prompt for best-of-n.
    sft = Policy("sft", *M.load_policy(options.sft, device))
    reference = [g.text for g in M.generate(sft.model, sft.tokenizer, prompts, **gen)] if judge is not None else None
    n_samples = max(options.ns)
    log.info("overoptimization: %d samples of the SFT policy on each of %d prompts", n_samples, len(prompts))
    samples = sample_n(sft.model, sft.tokenizer, prompts, n_samples, seed=options.seed, **gen)
    texts = [[g.text for g in drawn] for drawn in samples]
    sft_scored = score_samples(prompts, texts, proxy, gold, judge, reference, options.seed)
    points = best_of_n_points(sft_scored, sorted(set(options.ns)))
    # 3. RL: the SFT policy at KL 0 (its mean over all N samples, best-of-1), then each checkpoint's own samples.
    sft_point = best_of_n_points(sft_scored, [1])[0]
    points.append(dataclasses.replace(sft_point, method="rl", name="sft", n=None, path=str(options.sft)))
    for name, path in (options.checkpoints or {}).items():
        points.append(measure_checkpoint(name, path, sft, prompts, proxy, gold, judge, reference, options, device))
    # 4. Fit Gao et al.'s forms relative to the SFT policy's scores; report.
    baseline = {"gold": sft_point.gold, "proxy": sft_point.proxy}
    record = {
        "points": [p.record() for p in points],
        "baseline": baseline,
        "fits": {m: {s: f.record() if f else None for s, f in by.items()} for m, by in fit_curves(points, baseline).items()},
        "settings": {**dataclasses.asdict(options), "n_prompts": len(prompts), "n_samples": n_samples},
    }  # fmt: skip
    report(record, options, logger, print_table)
    return record


def measure_checkpoint(
    name: str,
    path: str,
    sft: Policy,
    prompts: Sequence[EvalPrompt],
    proxy: Scorer,
    gold: Scorer,
    judge: Judge | None,
    reference: Sequence[str] | None,
    options: OveroptimizationOptions,
    device: torch.device,
) -> CurvePoint:
    """An RL policy's point: one sample per prompt (temperature 1, seeded per prompt), scored; its KL to the SFT
    policy is the mean summed log-ratio on those samples (:func:`lit_rlhf.evaluation.metrics.kl_to_baseline`)."""
    policy = Policy(name, *M.load_policy(path, device))
    if not M.same_vocabulary(policy.tokenizer, sft.tokenizer):
        raise ValueError(f"--checkpoints {name!r} ({path}) has another vocabulary than --sft: no KL between them")
    log.info("overoptimization: sampling %s (%s)", name, path)
    generations = M.generate(policy.model, policy.tokenizer, prompts, do_sample=True, temperature=1.0, top_p=1.0,
                             seed=options.seed, max_new_tokens=options.max_new_tokens, batch_size=options.batch_size,
                             template=options.template)  # fmt: skip
    kl = M.kl_to_baseline(policy.model, sft.model, generations, policy.tokenizer.pad_token_id, options.batch_size)
    scored = score_samples(prompts, [[g.text] for g in generations], proxy, gold, judge, reference, options.seed)
    return rl_point(name, str(path), kl, scored)


# --------------------------------------------------------------------------- reporting


def report(record: Mapping[str, Any], options: OveroptimizationOptions, logger: Any | None, print_table: bool) -> None:
    """Print the table; write the JSON and the plot into ``options.output_dir``; log to ``logger``."""
    from lit_rlhf.models import atomic_directory

    render_table(record, print_table)
    output_dir = Path(options.output_dir) if options.output_dir is not None else None
    if output_dir is not None:
        with atomic_directory(output_dir) as tmp:
            (tmp / RESULTS_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
            plot_overoptimization(record, tmp / PLOT_FILE)
        log.info("overoptimization: wrote %s", output_dir)
    if logger is not None:
        metrics = {
            f"overoptimization/{method}/{score}/{key}": value
            for method, by_score in record["fits"].items()
            for score, fit in by_score.items()
            if fit is not None
            for key, value in fit.items()
            if isinstance(value, float)
        }
        logger.log_hyperparams({"overoptimization": record["settings"]})
        logger.log_metrics(metrics, step=0)
        if output_dir is not None and hasattr(logger, "log_image"):
            logger.log_image(key="overoptimization/plot", images=[str(output_dir / PLOT_FILE)])
        logger.save()


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(record: Mapping[str, Any], print_table: bool = True) -> str:
    """The points and the fits as rich tables (printed when ``print_table``); their plain text."""
    from rich.console import Console
    from rich.table import Table

    points = Table(title="Over-optimisation: gold and proxy against sqrt(KL) from the SFT policy")
    for column in ("method", "point", "KL", "sqrt KL", "gold", "proxy", "win rate"):
        points.add_column(column, justify="left" if column in ("method", "point") else "right")
    for p in record["points"]:
        win = "-" if p["win_rate"] is None else f"{100 * p['win_rate']:.1f}%"
        points.add_row(p["method"], p["name"], _fmt(p["kl"]), _fmt(p["sqrt_kl"]), _fmt(p["gold"]), _fmt(p["proxy"]),
                       win)  # fmt: skip
    fits = Table(title="Gao et al. fits of R(d) - R(0): best-of-n d(a - b d), RL d(a - b log d)")
    for column in ("method", "score", "alpha", "beta", "peak sqrt KL", "R^2", "points"):
        fits.add_column(column, justify="left" if column in ("method", "score") else "right")
    for method, by_score in record["fits"].items():
        for score, fit in by_score.items():
            if fit is None:
                fits.add_row(method, score, "-", "-", "-", "-", "< 2")
            else:
                fits.add_row(method, score, _fmt(fit["alpha"]), _fmt(fit["beta"]), _fmt(fit["peak_sqrt_kl"]),
                             _fmt(fit["r2"]), str(fit["n_points"]))  # fmt: skip
    recorder = Console(record=True, width=160, file=io.StringIO())
    for table in (points, fits):
        if print_table:
            Console().print(table)
        recorder.print(table)
    return recorder.export_text()


def plot_overoptimization(record: Mapping[str, Any], path: str | Path) -> Path:
    """A PNG of gold (left) and proxy (right) against sqrt(KL): best-of-n and RL points, their Gao fits dashed.

    Args:
        record: What :func:`overoptimization` returns.
        path: Where the PNG goes.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in tests and on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8), dpi=120)
    series = {"best_of_n": ("best-of-n", "o", "C0"), "rl": ("RL", "s", "C1")}
    d_max = max((p["sqrt_kl"] for p in record["points"]), default=1.0) or 1.0
    for ax, score in zip(axes, ("gold", "proxy"), strict=True):
        for method, (label, marker, color) in series.items():
            mine = [p for p in record["points"] if p["method"] == method]
            if not mine:
                continue
            ax.plot([p["sqrt_kl"] for p in mine], [p[score] for p in mine], marker, color=color, label=label)
            if method == "rl":  # name the checkpoints: their order along training is not their order in KL
                for p in mine:
                    ax.annotate(p["name"], (p["sqrt_kl"], p[score]), xytext=(3, 3), textcoords="offset points",
                                fontsize=7, color=color)  # fmt: skip
            fit = record["fits"][method][score]
            if fit is not None:
                ds = [d_max * i / 100 for i in range(101)]
                base = record["baseline"][score]
                fitted = [base + gao_curve(method, d, fit["alpha"], fit["beta"]) for d in ds]
                ax.plot(ds, fitted, "--", color=color, linewidth=1, label=f"{label} fit")
        ax.set_xlabel("sqrt(KL) from the SFT policy (nats^0.5)")
        ax.set_ylabel(f"{score} score")
        ax.set_title("gold (true) reward" if score == "gold" else "proxy reward model")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = [
    "PLOT_FILE",
    "RESULTS_FILE",
    "CurvePoint",
    "Fit",
    "OveroptimizationOptions",
    "Scored",
    "best_of_n_points",
    "fit_curves",
    "fit_gao",
    "gao_curve",
    "load_gold",
    "overoptimization",
    "plot_overoptimization",
    "render_table",
    "rl_point",
    "score_samples",
]

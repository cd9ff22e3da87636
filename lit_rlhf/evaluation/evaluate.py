"""``evaluate``: generate with each policy on held-out prompts, judge against the baseline, write the results.

Outputs (written atomically into ``output_dir``):

* ``results.json``: policy name -> figures (see :func:`evaluate`), and with ``judge_info`` also ``"judge"`` -> who
  judged and how it was made;
* ``win_rates.png``: the Figure-1 style plot;
* ``table.txt``: the terminal table;
* ``samples.jsonl``: each prompt with every policy's response;
* ``settings.json``: the options, the judge and the policy directories.

A best-of-n entry (``--best_of_n``) is one more policy: for each prompt the highest-scoring, by a reward model, of n
samples of a policy of ``--policies`` (:mod:`.best_of_n`); it is judged, grouped and measured like the others, with
the closed-form KL when it samples the baseline and no LM loss or benchmarks of its own.

Under several processes (``lit-rlhf evaluate --trainer.devices=N --trainer.strategy=ddp|fsdp2``, or any initialised
``torch.distributed`` group), every process loads each policy whole and takes every N-th prompt, text, question and
probe; the figures are combined with their weights (examples, or tokens for the LM loss), so greedy decoding and
seeded sampling give the single-process results; rank 0 judges all responses and writes the outputs.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from lit_rlhf.evaluation import metrics as M
from lit_rlhf.evaluation.best_of_n import best_of_n_kl, pick_best, sample_n
from lit_rlhf.evaluation.judges import Judge, RewardModelJudge, judge_name, judge_pairs, load_judge
from lit_rlhf.evaluation.options import BestOfN, EvaluateOptions
from lit_rlhf.evaluation.plots import plot_win_rates
from lit_rlhf.evaluation.prompts import EvalPrompt, load_eval_prompts
from lit_rlhf.evaluation.stats import win_rate

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
PLOT_FILE = "win_rates.png"


@dataclass(frozen=True)
class Shard:
    """This process's share of the evaluation: every ``world``-th item from ``rank``."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Shard:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def take(self, items: Sequence | None) -> list | None:
        return None if items is None else list(items)[self.rank :: self.world]

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (a collective)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def unshard(self, parts: list[list]) -> list:
        """The items of every rank's :meth:`take` back in their original order."""
        merged: list = [None] * sum(len(p) for p in parts)
        for rank, part in enumerate(parts):
            merged[rank :: self.world] = part
        return merged


def _weighted(value_weight: list[tuple[float | None, float]]) -> float | None:
    """Combine per-process means by their weights (examples, or tokens); None when no process had any."""
    total = sum(w for v, w in value_weight if v is not None)
    if total == 0:
        return None
    return sum(v * w for v, w in value_weight if v is not None) / total


@dataclass(frozen=True)
class EvalData:
    """What every policy is evaluated on; a benchmark not asked for is None.

    Attributes:
        prompts: The held-out prompts every policy answers and the judges see.
        indices: Each prompt's index in the whole evaluation set (it seeds the prompt's sampling stream).
        texts: Pretraining texts for the LM loss.
        truthfulqa: TruthfulQA questions (MC1).
        gsm8k: GSM8K problems.
        fewshot: Few-shot skill probes.
    """

    prompts: list[EvalPrompt]
    indices: list[int]
    texts: list[str] | None
    truthfulqa: list[M.MCQuestion] | None
    gsm8k: list[M.MathProblem] | None
    fewshot: list[dict[str, str]] | None

    @classmethod
    def read(cls, options: EvaluateOptions) -> EvalData:
        """The first ``options.max_examples`` of every file the options name."""
        o, n = options, options.max_examples
        prompts = load_eval_prompts(o.prompts_file, n)
        return cls(
            prompts=prompts,
            indices=list(range(len(prompts))),
            texts=M.read_texts(o.pretraining_file, n) if o.pretraining_file else None,
            truthfulqa=M.parse_truthfulqa(o.truthfulqa_file, n) if o.truthfulqa_file else None,
            gsm8k=M.parse_gsm8k(o.gsm8k_file, n) if o.gsm8k_file else None,
            fewshot=M.read_fewshot(o.fewshot_file, n) if o.fewshot_file else None,
        )

    def share(self, shard: Shard) -> EvalData:
        """This process's share: every ``shard.world``-th prompt, text, question and probe."""
        return EvalData(*(shard.take(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def benchmarks(self) -> dict[str, list | None]:
        """Figure name -> the examples it is measured on."""
        return {
            "lm_loss": self.texts,
            "fewshot_accuracy": self.fewshot,
            "truthfulqa_mc1": self.truthfulqa,
            "gsm8k_accuracy": self.gsm8k,
        }


Figures = dict[str, tuple[float | None, float]]
"""Figure name -> (value on this process's share, its weight: examples, or tokens for the LM loss)."""


def evaluate(
    options: EvaluateOptions,
    *,
    device: str | torch.device | None = None,
    logger: Any | None = None,
    print_table: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``options.policies`` against ``options.baseline`` (the options: :class:`EvaluateOptions`).

    From Python, ``options.judge`` may also be a :class:`Judge` or a judge function itself (see :func:`load_judge`).

    Args:
        device: Where the policies run; the GPU when there is one, else the CPU, when None.
        logger: A Lightning logger the figures, settings, table and plot go to.
        print_table: Print the results table.

    Returns:
        Policy name -> figures: ``n`` (judged prompts), ``win_rate`` and ``win_rate_ci95`` ([low, high], Wilson,
        ties half) and the counts behind them (``wins``, ``ties``, ``losses``) by ``judge``, the same with ``rm_``
        in front by ``rm_dir``, ``kl_to_<baseline>``,
        ``lm_loss``, ``fewshot_accuracy``, ``response_tokens``, ``eos_rate``, and when asked ``truthfulqa_mc1``,
        ``gsm8k_accuracy`` and one rate per response metric. A figure that was not computed is None. The baseline's
        win rates are 0.5 by definition (it is not judged against itself). With ``options.group_by`` also
        ``by_<group_by>``: group -> ``n`` and that group's win rates, counts and response metric rates (see
        :func:`prompt_groups`). Each ``--best_of_n`` entry is a policy too (after ``options.policies``): its
        ``kl_to_<baseline>`` is ``log n - (n-1)/n`` when it samples the baseline, else None, and its ``lm_loss``,
        ``fewshot_accuracy`` and benchmarks are None. Empty on every process but rank 0.
    """
    # 1. Check everything that can be checked before loading a model; read the data; load the judges (rank 0).
    options.check()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shard = Shard.current()
    data = EvalData.read(options)
    check_group_by(options, data.prompts)
    response_metrics = M.resolve_response_metrics(options.response_metrics)
    judge, rm_judge = load_judges(options, shard, device)
    # 2. Generate and measure with every policy on this process's share, then combine the processes' figures
    # (every rank takes part; rank 0 goes on alone).
    names = [*options.policies, *options.best_of_n_entries()]
    order = [options.baseline, *[n for n in names if n != options.baseline]]
    local = measure_policies(options, order, data.share(shard), device)
    gathered = shard.gather(local)
    if shard.rank != 0:
        return {}
    results = combine_figures([figures for figures, _ in gathered], order, data, options.baseline)
    responses = {name: shard.unshard([r[name] for _, r in gathered]) for name in order}
    # 3. Judge each policy's responses against the baseline's, and measure the response metrics: on all prompts
    # and, with --group_by, on each group (rank 0 has every response, in prompt order).
    judges = {prefix: j for prefix, j in (("", judge), ("rm_", rm_judge)) if j is not None}
    groups = prompt_groups(data.prompts, options.group_by) if options.group_by is not None else {}
    for name in order:
        verdicts = Verdicts.collect(name, judges, data.prompts, responses, response_metrics, options)
        results[name].update(verdicts.figures(range(len(data.prompts))))
        if groups:
            results[name][f"by_{options.group_by}"] = {
                group: {"n": len(indices), **verdicts.figures(indices)} for group, indices in groups.items()
            }
    results = {name: {k: _json_value(v) for k, v in results[name].items()} for name in names}
    # 4. Report: table, files, logger.
    report(options, results, data.prompts, responses, judge, logger, print_table)
    return results


def load_judges(options: EvaluateOptions, shard: Shard, device: torch.device) -> tuple[Judge | None, Judge | None]:
    """The judge and the reward-model judge, on rank 0 (None elsewhere: only rank 0 judges).

    A judge that cannot be loaded stops every process, not only rank 0 (the others would wait for it at the first
    collective).
    """
    judge = rm_judge = problem = None
    if shard.rank == 0:
        try:
            judge = load_judge(options.judge, device=device) if options.judge is not None else None
            rm_judge = _rm_judge(judge, options.rm_dir, device)
        except Exception as e:  # re-raised below, after every rank has heard of it
            problem = e
    problems = shard.gather(None if problem is None else f"{type(problem).__name__}: {problem}")
    if problem is not None:
        raise problem
    if problems[0] is not None:
        raise RuntimeError(f"evaluate: rank 0 could not load the judge ({problems[0]})")
    return judge, rm_judge


WIN_COUNTS = ("wins", "ties", "losses")
"""The counts behind a win rate, in results.json."""

NO_GROUP = "none"
"""The group of a prompt whose record lacks the ``--group_by`` key (or holds null there)."""


def prompt_groups(prompts: Sequence[EvalPrompt], key: str) -> dict[str, list[int]]:
    """Group -> the indices of its prompts, in prompt order; groups sorted by name.

    A prompt's group is ``str`` of its record's ``key`` (``True`` -> ``"True"``), :data:`NO_GROUP` where the record
    lacks the key or holds null there.
    """
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        value = prompt.record.get(key)
        groups.setdefault(NO_GROUP if value is None else str(value), []).append(i)
    return dict(sorted(groups.items()))


def check_group_by(options: EvaluateOptions, prompts: Sequence[EvalPrompt]) -> None:
    """Raise a ValueError when ``options.group_by`` is a key that no prompt record has (a typo would otherwise put
    every prompt in one group, :data:`NO_GROUP`)."""
    key = options.group_by
    if key is None or any(key in prompt.record for prompt in prompts):
        return
    keys = sorted({k for prompt in prompts for k in prompt.record})
    raise ValueError(
        f"--group_by {key!r}: none of the {len(prompts)} prompts read from --prompts_file {options.prompts_file} "
        f"has that key (their keys: {', '.join(keys)})"
    )


@dataclass(frozen=True)
class Policy:
    """A loaded policy and its name in ``--policies``."""

    name: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase

    @classmethod
    def load(cls, options: EvaluateOptions, name: str, device: torch.device) -> Policy:
        return cls(name, *M.load_policy(options.policies[name], device))


def measure_policies(
    options: EvaluateOptions, order: list[str], data: EvalData, device: torch.device
) -> tuple[dict[str, Figures], dict[str, list[str]]]:
    """Generate with every policy in ``order`` (the baseline first: each other policy's KL is measured against it)
    on ``data``, and measure it; a best-of-n entry right after the policy it samples, while that one is loaded.

    Returns:
        Policy name -> its figures, and policy name -> its responses to ``data.prompts``.
    """
    base = Policy.load(options, options.baseline, device)
    best_of_n = options.best_of_n_entries()
    scorers: dict[str, RewardModelJudge] = {}  # reward-model directory -> the model, loaded once
    figures: dict[str, Figures] = {}
    responses: dict[str, list[str]] = {}
    for name in order:
        if name in best_of_n:
            continue
        log.info("evaluate: generating with %s (%s) on %d prompts", name, options.policies[name], len(data.prompts))
        policy = base if name == base.name else Policy.load(options, name, device)
        generations = M.generate(
            policy.model,
            policy.tokenizer,
            data.prompts,
            indices=data.indices,
            template=options.template,
            **options.generation_settings(),
        )
        responses[name] = [g.text for g in generations]
        figures[name] = {
            **response_figures(generations),
            f"kl_to_{base.name}": kl_figure(policy, base, generations, options.batch_size),
            **benchmark_figures(policy, data, options),
        }
        for bon_name, spec in best_of_n.items():
            if spec.policy != name:
                continue
            log.info("evaluate: best of %d of %s by %s (%s)", spec.n, name, spec.reward_model, bon_name)
            if spec.reward_model not in scorers:
                scorers[spec.reward_model] = RewardModelJudge(
                    spec.reward_model, batch_size=options.batch_size, template=options.template, device=device
                )
            best = best_of_n_generations(spec, policy, data, options, scorers[spec.reward_model])
            responses[bon_name] = [g.text for g in best]
            kl = (best_of_n_kl(spec.n), len(best)) if policy is base else (None, 0)  # the closed form, see its doc
            figures[bon_name] = {**response_figures(best), f"kl_to_{base.name}": kl}
        del policy  # the baseline stays loaded (as base) until every policy is measured
    return figures, responses


def best_of_n_generations(
    spec: BestOfN, policy: Policy, data: EvalData, options: EvaluateOptions, scorer: RewardModelJudge
) -> list[M.Generation]:
    """For each prompt of ``data``, the sample of ``spec.n`` from ``policy`` that ``scorer`` scores highest (the
    earliest on a tie); the samples are seeded by ``options.seed`` and each prompt's index (:func:`sample_n`)."""
    samples = sample_n(policy.model, policy.tokenizer, data.prompts, spec.n, indices=data.indices, seed=options.seed,
                       max_new_tokens=options.max_new_tokens, batch_size=options.batch_size,
                       template=options.template)  # fmt: skip
    prompts = [prompt for prompt, drawn in zip(data.prompts, samples, strict=True) for _ in drawn]
    scores = scorer.scores(prompts, [g.text for drawn in samples for g in drawn])
    n = spec.n
    return [drawn[pick_best(scores[i * n : (i + 1) * n])] for i, drawn in enumerate(samples)]


def response_figures(generations: list[M.Generation]) -> Figures:
    """Mean response length in tokens and the share of responses that ended with EOS."""
    n = len(generations)
    return {
        "response_tokens": (sum(len(g.response_ids) for g in generations) / n if n else None, n),
        "eos_rate": (sum(g.ended for g in generations) / n if n else None, n),
    }


def kl_figure(
    policy: Policy, base: Policy, generations: list[M.Generation], batch_size: int
) -> tuple[float | None, float]:
    """KL of ``policy`` to the baseline on its own responses (0 for the baseline; None across vocabularies)."""
    if policy is base:
        return 0.0, 1
    if not M.same_vocabulary(policy.tokenizer, base.tokenizer):
        log.warning("evaluate: %s and %s have different vocabularies; no KL between them", policy.name, base.name)
        return None, 0
    if not generations:  # this process's share of the prompts is empty
        return None, 0
    kl = M.kl_to_baseline(policy.model, base.model, generations, policy.tokenizer.pad_token_id, batch_size)
    return kl, len(generations)


def benchmark_figures(policy: Policy, data: EvalData, options: EvaluateOptions) -> Figures:
    """LM loss, few-shot accuracy, TruthfulQA MC1 and GSM8K accuracy, each where its data was given."""
    model, tokenizer, o = policy.model, policy.tokenizer, options
    figures: Figures = {}
    if data.texts:
        figures["lm_loss"] = M.lm_loss(model, tokenizer, data.texts, o.lm_max_length, o.batch_size, return_count=True)
    if data.fewshot:
        accuracy = M.fewshot_accuracy(model, tokenizer, data.fewshot, batch_size=o.batch_size)
        figures["fewshot_accuracy"] = (accuracy, len(data.fewshot))
    if data.truthfulqa:
        accuracy = M.mc_accuracy(model, tokenizer, data.truthfulqa, o.template, o.batch_size)
        figures["truthfulqa_mc1"] = (accuracy, len(data.truthfulqa))
    if data.gsm8k:
        accuracy = M.gsm8k_accuracy(model, tokenizer, data.gsm8k, o.gsm8k_max_new_tokens, o.template, o.batch_size)
        figures["gsm8k_accuracy"] = (accuracy, len(data.gsm8k))
    return figures


def combine_figures(
    per_process: list[dict[str, Figures]], order: list[str], data: EvalData, baseline: str
) -> dict[str, dict[str, Any]]:
    """Every process's figures combined with their weights, per policy in ``order``.

    LM loss and few-shot accuracy are always reported (None when not asked); TruthfulQA and GSM8K only when asked.
    """
    benchmarks = data.benchmarks()
    results: dict[str, dict[str, Any]] = {}
    for name in order:
        figures: dict[str, Any] = {"n": len(data.prompts)}
        for key in ("response_tokens", "eos_rate", f"kl_to_{baseline}", *benchmarks):
            if key in benchmarks and not benchmarks[key]:
                if key in ("lm_loss", "fewshot_accuracy"):
                    figures[key] = None
                continue
            figures[key] = _weighted([f[name].get(key, (None, 0)) for f in per_process])
        results[name] = figures
    return results


def report(
    options: EvaluateOptions,
    results: dict[str, dict[str, Any]],
    prompts: list[EvalPrompt],
    responses: dict[str, list[str]],
    judge: Judge | None,
    logger: Any | None,
    print_table: bool,
) -> None:
    """Print the table; write the outputs into ``options.output_dir``; log to ``logger``."""
    settings = {
        "policies": {k: str(v) for k, v in options.policies.items()},
        "baseline": options.baseline,
        "judge": judge_name(judge) if judge else None,
        "judge_info": options.judge_info,
        "rm_dir": options.rm_dir,
        "prompts_file": options.prompts_file,
        "n_prompts": len(prompts),
        "generation": options.generation_settings(),
        "template": options.template,
        "shuffle_positions": options.shuffle_positions,
        "group_by": options.group_by,
        "best_of_n": {name: dataclasses.asdict(spec) for name, spec in options.best_of_n_entries().items()},
    }
    table_text = render_table(results, options.baseline, print_table)
    output_dir = Path(options.output_dir) if options.output_dir is not None else None
    if output_dir is not None:
        judge_record = {"name": settings["judge"], **options.judge_info} if options.judge_info is not None else None
        write_outputs(output_dir, results, settings, table_text, prompts, responses, judge_record)
    if logger is not None:
        log_results(logger, results, settings, output_dir / PLOT_FILE if output_dir is not None else None)


def _rm_judge(judge: Judge | None, rm_dir: str | None, device: torch.device) -> RewardModelJudge | None:
    if rm_dir is None:
        return judge if isinstance(judge, RewardModelJudge) else None
    if isinstance(judge, RewardModelJudge) and judge.name == f"rm:{Path(rm_dir)}":
        return judge  # the same model: score once
    return RewardModelJudge(rm_dir, device=device)


@dataclass(frozen=True)
class Verdicts:
    """One policy's verdicts, one per prompt in prompt order: its figures on any set of prompts (all of them, or a
    group of ``--group_by``) follow from these, in one way.

    Attributes:
        outcomes: Judge prefix ('' for the judge, 'rm_' for the reward model; only judges there are) -> each
            prompt's outcome against the baseline (1: the policy's response is better, 0.5: a tie); None for the
            baseline, which is not judged against itself.
        flags: Response metric name -> each response's flag (None: the metric does not apply to that prompt).
    """

    outcomes: dict[str, list[float] | None]
    flags: dict[str, list[bool | None]]

    @classmethod
    def collect(
        cls,
        name: str,
        judges: Mapping[str, Judge],
        prompts: Sequence[EvalPrompt],
        responses: Mapping[str, list[str]],
        response_metrics: Mapping[str, M.ResponseMetric],
        options: EvaluateOptions,
    ) -> Verdicts:
        """Ask each judge about ``name``'s responses against the baseline's; flag them with each response metric."""
        outcomes: dict[str, list[float] | None] = {}
        for prefix, judge in judges.items():
            if name == options.baseline:
                outcomes[prefix] = None
            else:
                baseline_responses = responses[options.baseline]
                outcomes[prefix] = judge_pairs(
                    judge, prompts, responses[name], baseline_responses, options.seed, options.shuffle_positions
                )
        flags = {
            metric_name: [metric(p, r) for p, r in zip(prompts, responses[name], strict=True)]
            for metric_name, metric in response_metrics.items()
        }
        return cls(outcomes, flags)

    def figures(self, indices: Sequence[int]) -> dict[str, Any]:
        """Win rates (with intervals and counts) by each judge, and response metric rates, on the prompts at
        ``indices``; a judge that is not there gives None."""
        figures: dict[str, Any] = {}
        for prefix in ("", "rm_"):
            if prefix not in self.outcomes:
                figures.update(dict.fromkeys(f"{prefix}{k}" for k in ("win_rate", "win_rate_ci95", *WIN_COUNTS)))
            else:
                outcomes = self.outcomes[prefix]
                figures.update(win_figures(prefix, None if outcomes is None else [outcomes[i] for i in indices]))
        for metric_name, flags in self.flags.items():
            counted = [bool(flags[i]) for i in indices if flags[i] is not None]  # as M.response_rate counts
            figures[metric_name] = sum(counted) / len(counted) if counted else None
        return figures


def win_figures(prefix: str, outcomes: Sequence[float] | None) -> dict[str, Any]:
    """``<prefix>win_rate``, its 95% Wilson interval (``_ci95``) and the counts behind it (``<prefix>wins``,
    ``ties``, ``losses``) of ``outcomes``; None: the baseline's (0.5 by definition, no counts)."""
    if outcomes is None:
        uncounted = dict.fromkeys(f"{prefix}{k}" for k in WIN_COUNTS)
        return {f"{prefix}win_rate": 0.5, f"{prefix}win_rate_ci95": [0.5, 0.5], **uncounted}
    wr = win_rate(outcomes)
    counts = {f"{prefix}wins": wr.wins, f"{prefix}ties": wr.ties, f"{prefix}losses": wr.n - wr.wins - wr.ties}
    return {f"{prefix}win_rate": wr.rate, f"{prefix}win_rate_ci95": [wr.low, wr.high], **counts}


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return M.finite_or_none(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------- reporting


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.1f}%" if pct else f"{value:.3f}"
    return str(value)


def _fmt_rate(figures: Mapping[str, Any], key: str) -> str:
    rate, ci = figures.get(key), figures.get(f"{key}_ci95")
    if rate is None:
        return "-"
    return f"{100 * rate:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * rate:.1f}%"


def _fmt_counts(figures: Mapping[str, Any], prefix: str) -> str:
    counts = [figures.get(f"{prefix}{k}") for k in WIN_COUNTS]
    return "-" if None in counts else "/".join(map(str, counts))


def _groupings(figures: Mapping[str, Any]) -> dict[str, Mapping[str, Mapping[str, Any]]]:
    """The breakdowns by group among a policy's ``figures``: ``--group_by`` key -> group -> figures (results.json
    holds them as ``by_<key>``)."""
    return {k.removeprefix("by_"): v for k, v in figures.items() if isinstance(v, Mapping)}


TABLE_WIDTH = 120
"""``table.txt`` and the printed tables fit this many columns (a terminal beside an editor)."""

METRIC_HEADERS: dict[str, tuple[str, str]] = {
    "rm_win_rate": ("RM win", "win rate by the training reward model (the proxy PPO optimised; not the judge)"),
    "rm_win_rate_ci95": ("RM 95%", "its 95% Wilson interval"),
    "eos_rate": ("EOS", "share of responses that ended with EOS"),
    "lm_loss": ("LM loss", "LM loss on held-out pretraining text, nats/token (the alignment tax)"),
    "truthfulqa_mc1": ("TQA MC1", "TruthfulQA MC1 accuracy"),
    "gsm8k_accuracy": ("GSM8K", "GSM8K accuracy"),
    "fewshot_accuracy": ("few-shot", "accuracy on the few-shot probes"),
    "constraint_following_rate": ("constr.", "share of constrained prompts whose form the response follows"),
    "preamble_rate": ("preamble", "share of responses that open with a preamble ('Sure!')"),
    "padding_rate": ("padding", "share of responses that end with padding ('Hope that helps!')"),
    "invented_answer_rate": ("invented", "share of unanswerable questions answered instead of declined"),
    "toxic_rate": ("toxic", "share of toxic responses to toxicity prompts"),
    "toxic_rate_plain": ("tox.plain", "the same, prompts without the 'be respectful' instruction"),
    "toxic_rate_respectful": ("tox.resp.", "the same, prompts with it"),
    "exact_match": ("exact", "share of exactly right answers (tasks and closed questions)"),
}
"""Short headers for the metrics table, each with the line the legend under it gives (other keys: their name)."""


def _cell_width(texts: Sequence[str]) -> int:
    return max(len(t) for t in texts) + 3  # rich's padding and the column's border


def metric_chunks(columns: Sequence[tuple[str, list[str]]], first: int, width: int = TABLE_WIDTH) -> list[list[int]]:
    """Indices of ``columns`` (header and cells each) packed in order into tables no wider than ``width``, each
    table repeating a first column ``first`` characters wide."""
    chunks: list[list[int]] = [[]]
    used = first + 1
    for i, (header, cells) in enumerate(columns):
        w = _cell_width([header, *cells])
        if chunks[-1] and used + w > width:
            chunks.append([])
            used = first + 1
        chunks[-1].append(i)
        used += w
    return [c for c in chunks if c]


def render_table(results: Mapping[str, Mapping[str, Any]], baseline: str, print_table: bool = True) -> str:
    """Print the results as rich tables no wider than :data:`TABLE_WIDTH` (when ``print_table``); return their plain
    text for ``table.txt``. First the win rates (policy, n, win rate [95% interval], wins/ties/losses, KL to the
    baseline, response tokens), then the other metrics under short headers with a legend, then each policy's win
    rates per group where they were grouped. ``results.json`` keeps every figure."""
    from rich.console import Console
    from rich.table import Table

    kl = f"kl_to_{baseline}"
    main = {"n", "win_rate", "win_rate_ci95", kl, "response_tokens", *WIN_COUNTS}
    shown = main | {"rm_win_rate_ci95"} | {f"rm_{count}" for count in WIN_COUNTS}  # results.json
    shown |= {f"by_{key}" for f in results.values() for key in _groupings(f)}  # the group tables
    rates = {"rm_win_rate", "eos_rate", "truthfulqa_mc1", "gsm8k_accuracy", "fewshot_accuracy", "exact_match"}
    unmeasured = {k for k in dict.fromkeys(k for f in results.values() for k in f) if
                  all(f.get(k) is None for f in results.values())}  # fmt: skip
    extra = [k for k in dict.fromkeys(k for f in results.values() for k in f) if k not in shown | unmeasured]

    title = f"Win rates against {baseline} (95% Wilson intervals; a tie counts half)"
    table = Table(title=title)
    for column in ["policy", "n", "win rate [95%]", "W/T/L", f"KL to {baseline}", "resp. tokens"]:
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, figures in results.items():
        table.add_row(name, str(figures["n"]), _fmt_rate(figures, "win_rate"), _fmt_counts(figures, ""),
                      _fmt(figures.get(kl)), _fmt(figures.get("response_tokens")))  # fmt: skip
    tables: list[Any] = [table]

    columns = [
        (METRIC_HEADERS.get(k, (k, ""))[0], [_fmt(f.get(k), pct=k in rates or "_rate" in k) for f in
                                             results.values()])
        for k in extra
    ]  # fmt: skip
    first = _cell_width(["policy", *results])
    for chunk in metric_chunks(columns, first):
        metrics = Table(title="Metrics" if len(tables) == 1 else None)
        metrics.add_column("policy")
        for i in chunk:
            metrics.add_column(columns[i][0], justify="right")
        for row, name in enumerate(results):
            metrics.add_row(name, *(columns[i][1][row] for i in chunk))
        tables.append(metrics)
    legend = [f"  {METRIC_HEADERS[k][0]}: {METRIC_HEADERS[k][1]}" for k in extra if k in METRIC_HEADERS]
    if legend:
        tables.append("\n".join(legend))

    for name, figures in results.items():
        if name != baseline:  # the baseline's win rates are 0.5 in every group
            tables += [group_table(name, key, groups) for key, groups in _groupings(figures).items()]
    recorder = Console(record=True, width=TABLE_WIDTH, file=io.StringIO())
    for t in tables:
        if print_table:
            Console().print(t, highlight=False, markup=False) if isinstance(t, str) else Console().print(t)
        if isinstance(t, str):
            recorder.print(t, highlight=False, markup=False)
        else:
            recorder.print(t)
    return recorder.export_text()


def group_table(name: str, key: str, groups: Mapping[str, Mapping[str, Any]]) -> Any:
    """A rich table of ``name``'s win rate [95% interval] and wins/ties/losses in each group of ``key``, and the
    reward model's beside them when it judged."""
    from rich.table import Table

    rm = any(figures.get("rm_win_rate") is not None for figures in groups.values())
    table = Table(title=f"{name} by {key}")
    for column in [key, "n", "win rate", "W/T/L", *(["RM win rate", "RM W/T/L"] if rm else [])]:
        table.add_column(column, justify="left" if column == key else "right")
    for group, figures in groups.items():
        cells = [_fmt_rate(figures, "win_rate"), _fmt_counts(figures, "")]
        if rm:
            cells += [_fmt_rate(figures, "rm_win_rate"), _fmt_counts(figures, "rm_")]
        table.add_row(group, str(figures["n"]), *cells)
    return table


def write_outputs(
    output_dir: Path,
    results: Mapping[str, Any],
    settings: Mapping[str, Any],
    table_text: str,
    prompts: Sequence[EvalPrompt],
    responses: Mapping[str, list[str]],
    judge: Mapping[str, Any] | None = None,
) -> None:
    """Write results, plot, table, samples and settings into ``output_dir``, replacing it only when all are done;
    ``judge`` (who judged, how it was made) goes into results.json beside the policies, under ``"judge"``."""
    from lit_rlhf.models import atomic_directory

    with atomic_directory(output_dir) as tmp:
        record = {**results, "judge": dict(judge)} if judge is not None else results
        (tmp / RESULTS_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
        (tmp / "table.txt").write_text(table_text)
        with open(tmp / "samples.jsonl", "w", encoding="utf-8") as f:
            for i, prompt in enumerate(prompts):
                row = {"prompt": prompt.text, **{name: r[i] for name, r in responses.items()}}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        plot_win_rates(results, str(settings["baseline"]), tmp / PLOT_FILE)
    log.info("evaluate: wrote %s", output_dir)


def log_results(logger: Any, results: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any],
                plot: Path | None) -> None:  # fmt: skip
    """Log figures (``eval/<policy>/<figure>``, and per group ``eval/<policy>/<figure>/<group_by>=<group>``),
    settings, and for W&B the table and the plot."""
    metrics = {}
    for name, figures in results.items():
        metrics |= _scalars(f"eval/{name}", figures)
        for key, groups in _groupings(figures).items():
            for group, group_figures in groups.items():
                metrics |= _scalars(f"eval/{name}", group_figures, suffix=f"/{key}={group}")
    logger.log_hyperparams({"evaluate": dict(settings)})
    logger.log_metrics(metrics, step=0)
    keys = list(dict.fromkeys(k for f in results.values() for k in f))
    if hasattr(logger, "log_table"):
        data = [[name, *[json.dumps(f.get(k)) if isinstance(f.get(k), (list, dict)) else f.get(k) for k in keys]]
                for name, f in results.items()]  # fmt: skip
        logger.log_table(key="eval/results", columns=["policy", *keys], data=data)
    if plot is not None and plot.is_file() and hasattr(logger, "log_image"):
        logger.log_image(key="eval/win_rates", images=[str(plot)])
    logger.save()


def _scalars(prefix: str, figures: Mapping[str, Any], suffix: str = "") -> dict[str, float]:
    """The numbers among ``figures`` by metric name; an interval as ``<figure>_low`` and ``<figure>_high``."""
    scalars = {}
    for key, value in figures.items():
        if isinstance(value, list) and len(value) == 2:
            scalars[f"{prefix}/{key}_low{suffix}"], scalars[f"{prefix}/{key}_high{suffix}"] = value
        elif isinstance(value, (int, float)):
            scalars[f"{prefix}/{key}{suffix}"] = value
    return scalars


__all__ = ["PLOT_FILE", "RESULTS_FILE", "EvalData", "evaluate", "log_results", "render_table", "write_outputs"]

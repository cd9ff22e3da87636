"""``evaluate``: generate with each policy on held-out prompts, judge against the baseline, write the results.

Outputs (written atomically into ``output_dir``):

* ``results.json``: policy name -> figures (see :func:`evaluate`);
* ``win_rates.png``: the Figure-1 style plot;
* ``table.txt``: the terminal table;
* ``samples.jsonl``: each prompt with every policy's response;
* ``settings.json``: the options, the judge and the policy directories.

Under several processes (``lit-rlhf evaluate --trainer.devices=N --trainer.strategy=ddp|fsdp2``, or any initialised
``torch.distributed`` group), every process loads each policy whole and takes every N-th prompt, text, question and
probe; the figures are combined with their weights (examples, or tokens for the LM loss), so greedy decoding gives
the single-process results; rank 0 judges all responses and writes the outputs.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_rlhf.data.collate import Template
from lit_rlhf.data.records import expand_files
from lit_rlhf.evaluation import metrics as M
from lit_rlhf.evaluation.judges import Judge, RewardModelJudge, judge_name, judge_pairs, load_judge
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


def check_options(
    policies: Mapping[str, str | os.PathLike],
    baseline: str,
    prompts_file: str | list[str],
    rm_dir: str | None,
    files: Mapping[str, str | None],
    max_examples: int | None,
    max_new_tokens: int,
    temperature: float,
) -> None:
    """Raise one ValueError listing every problem with the options, before any model is loaded."""
    problems = []
    if not policies:
        problems.append("--policies is empty; give at least the baseline, e.g. {sft: runs/sft/hf, ppo: runs/ppo/hf}")
    elif baseline not in policies:
        problems.append(f"--baseline {baseline!r} is not one of --policies {sorted(policies)}")
    for name, path in policies.items():
        problems.extend(M.policy_dir_problems(name, path))
    for flag, value in {"--prompts_file": prompts_file, **files}.items():
        if value is None:
            continue
        try:
            expand_files(value)
        except ValueError as e:
            problems.append(f"{flag}: {e}")
    if rm_dir is not None and not (Path(rm_dir) / "config.json").is_file():
        problems.append(f"--rm_dir {rm_dir}: no config.json there (not a reward-model directory)")
    if max_examples is not None and max_examples < 1:
        problems.append(f"--max_examples must be >= 1 or null, got {max_examples}")
    if max_new_tokens < 1:
        problems.append(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature <= 0:
        problems.append(f"--temperature must be > 0, got {temperature}")
    if problems:
        raise ValueError("cannot evaluate:\n  " + "\n  ".join(problems))


def evaluate(
    policies: Mapping[str, str | os.PathLike],
    prompts_file: str | list[str],
    baseline: str = "sft",
    judge: Judge | Callable[..., Any] | str | None = None,
    output_dir: str | os.PathLike | None = None,
    rm_dir: str | None = None,
    pretraining_file: str | list[str] | None = None,
    truthfulqa_file: str | None = None,
    gsm8k_file: str | None = None,
    fewshot_file: str | list[str] | None = None,
    response_metrics: Mapping[str, str | M.ResponseMetric] | str | None = None,
    max_examples: int | None = None,
    max_new_tokens: int = 64,
    gsm8k_max_new_tokens: int = 256,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    template: Template = "auto",
    lm_max_length: int = 512,
    shuffle_positions: bool = True,
    device: str | torch.device | None = None,
    logger: Any | None = None,
    print_table: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``policies`` against ``baseline``; see :meth:`lit_rlhf.cli.LitRLHFTrainer.evaluate` for the options.

    Returns:
        Policy name -> figures: ``n`` (judged prompts), ``win_rate`` and ``win_rate_ci95`` ([low, high], Wilson,
        ties half) by ``judge``, ``rm_win_rate`` and ``rm_win_rate_ci95`` by ``rm_dir``, ``kl_to_<baseline>``,
        ``lm_loss``, ``fewshot_accuracy``, ``response_tokens``, ``eos_rate``, and when asked ``truthfulqa_mc1``,
        ``gsm8k_accuracy`` and one rate per response metric. A figure that was not computed is None. The baseline's
        win rates are 0.5 by definition (it is not judged against itself).
    """
    # 1. Check everything that can be checked before loading a model.
    files = {"--pretraining_file": pretraining_file, "--truthfulqa_file": truthfulqa_file, "--gsm8k_file": gsm8k_file,
             "--fewshot_file": fewshot_file}  # fmt: skip
    check_options(policies, baseline, prompts_file, rm_dir, files, max_examples, max_new_tokens, temperature)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shard = Shard.current()
    prompts = load_eval_prompts(prompts_file, max_examples)
    texts = M.read_texts(pretraining_file, max_examples) if pretraining_file else None
    truthfulqa = M.parse_truthfulqa(truthfulqa_file, max_examples) if truthfulqa_file else None
    gsm8k = M.parse_gsm8k(gsm8k_file, max_examples) if gsm8k_file else None
    fewshot = M.read_fewshot(fewshot_file, max_examples) if fewshot_file else None
    extra_metrics = M.resolve_response_metrics(response_metrics)
    the_judge = rm_judge = problem = None
    if shard.rank == 0:  # only rank 0 judges
        try:
            the_judge = load_judge(judge, device=device) if judge is not None else None
            rm_judge = _rm_judge(the_judge, rm_dir, device)
        except Exception as e:  # every rank must stop, not wait for rank 0 at the first collective
            problem = e
    problems = shard.gather(None if problem is None else f"{type(problem).__name__}: {problem}")
    if problem is not None:
        raise problem
    if problems[0] is not None:
        raise RuntimeError(f"evaluate: rank 0 could not load the judge ({problems[0]})")

    # 2. Generate with every policy (baseline first: each other policy's KL is measured against it), on this
    # process's share of the prompts and examples; each figure is kept with its weight.
    my_prompts, my_texts = shard.take(prompts), shard.take(texts)
    my_truthfulqa, my_gsm8k, my_fewshot = shard.take(truthfulqa), shard.take(gsm8k), shard.take(fewshot)
    order = [baseline, *[n for n in policies if n != baseline]]
    base_model, base_tokenizer = M.load_policy(policies[baseline], device)
    kl_key = f"kl_to_{baseline}"
    local: dict[str, dict[str, tuple[float | None, float]]] = {}
    local_responses: dict[str, list[str]] = {}
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p,
                      seed=seed + shard.rank, batch_size=batch_size, template=template)  # fmt: skip
    for name in order:
        log.info("evaluate: generating with %s (%s) on %d prompts", name, policies[name], len(my_prompts))
        model, tokenizer = (base_model, base_tokenizer) if name == baseline else M.load_policy(policies[name], device)
        generations = M.generate(model, tokenizer, my_prompts, **gen_kwargs) if my_prompts else []
        local_responses[name] = [g.text for g in generations]
        n = len(generations)
        figures: dict[str, tuple[float | None, float]] = {
            "response_tokens": (sum(len(g.response_ids) for g in generations) / n if n else None, n),
            "eos_rate": (sum(g.ended for g in generations) / n if n else None, n),
        }
        if name == baseline:
            figures[kl_key] = (0.0, 1)
        elif M.same_vocabulary(tokenizer, base_tokenizer):
            kl = M.kl_to_baseline(model, base_model, generations, tokenizer.pad_token_id, batch_size) if n else None
            figures[kl_key] = (kl, n)
        else:
            log.warning("evaluate: %s and %s have different vocabularies; no KL between them", name, baseline)
            figures[kl_key] = (None, 0)
        if my_texts:
            figures["lm_loss"] = M.lm_loss(model, tokenizer, my_texts, lm_max_length, batch_size, return_count=True)
        if my_fewshot:
            figures["fewshot_accuracy"] = (M.fewshot_accuracy(model, tokenizer, my_fewshot, batch_size=batch_size),
                                           len(my_fewshot))  # fmt: skip
        if my_truthfulqa:
            figures["truthfulqa_mc1"] = (M.mc_accuracy(model, tokenizer, my_truthfulqa, template, batch_size),
                                         len(my_truthfulqa))  # fmt: skip
        if my_gsm8k:
            figures["gsm8k_accuracy"] = (
                M.gsm8k_accuracy(model, tokenizer, my_gsm8k, gsm8k_max_new_tokens, template, batch_size),
                len(my_gsm8k),
            )
        local[name] = figures
        if name != baseline:
            del model
    del base_model

    # Combine the processes' figures (every rank takes part; rank 0 goes on alone).
    gathered = shard.gather((local, local_responses))
    if shard.rank != 0:
        return {}
    all_figures = [figures for figures, _ in gathered]
    responses = {name: shard.unshard([r[name] for _, r in gathered]) for name in order}
    keys = {"lm_loss": texts, "fewshot_accuracy": fewshot, "truthfulqa_mc1": truthfulqa, "gsm8k_accuracy": gsm8k}
    results: dict[str, dict[str, Any]] = {}
    for name in order:
        figures = {"n": len(prompts)}
        for key in ("response_tokens", "eos_rate", kl_key, *keys):
            if key in keys and not keys[key]:
                if key in ("lm_loss", "fewshot_accuracy"):
                    figures[key] = None  # always reported, None when not asked
                continue
            figures[key] = _weighted([f[name].get(key, (None, 0)) for f in all_figures])
        results[name] = figures

    # 3. Judge each policy's responses against the baseline's, and measure the response metrics.
    for name in order:
        for prefix, j in (("", the_judge), ("rm_", rm_judge)):
            results[name].update(_judged(prefix, j, name, baseline, prompts, responses, seed, shuffle_positions))
        for metric_name, metric in extra_metrics.items():
            results[name][metric_name] = M.response_rate(metric, prompts, responses[name])
    results = {name: results[name] for name in policies}  # the user's order
    results = {name: {k: _json_value(v) for k, v in figures.items()} for name, figures in results.items()}

    # 4. Report: table, files, logger.
    settings = {
        "policies": {k: str(v) for k, v in policies.items()},
        "baseline": baseline,
        "judge": judge_name(the_judge) if the_judge else None,
        "rm_dir": rm_dir,
        "prompts_file": prompts_file,
        "n_prompts": len(prompts),
        "generation": {k: v for k, v in gen_kwargs.items() if k != "template"},
        "template": template,
        "shuffle_positions": shuffle_positions,
    }
    table_text = render_table(results, baseline, print_table)
    if output_dir is not None:
        write_outputs(Path(output_dir), results, settings, table_text, prompts, responses)
    if logger is not None:
        log_results(logger, results, settings, Path(output_dir) / PLOT_FILE if output_dir is not None else None)
    return results


def _rm_judge(judge: Judge | None, rm_dir: str | None, device: torch.device) -> RewardModelJudge | None:
    if rm_dir is None:
        return judge if isinstance(judge, RewardModelJudge) else None
    if isinstance(judge, RewardModelJudge) and judge.name == f"rm:{Path(rm_dir)}":
        return judge  # the same model: score once
    return RewardModelJudge(rm_dir, device=device)


def _judged(
    prefix: str,
    judge: Judge | None,
    name: str,
    baseline: str,
    prompts: Sequence[EvalPrompt],
    responses: Mapping[str, list[str]],
    seed: int,
    shuffle_positions: bool,
) -> dict[str, Any]:
    if judge is None:
        return {f"{prefix}win_rate": None, f"{prefix}win_rate_ci95": None}
    if name == baseline:  # against itself: a tie by definition
        return {f"{prefix}win_rate": 0.5, f"{prefix}win_rate_ci95": [0.5, 0.5]}
    outcomes = judge_pairs(judge, prompts, responses[name], responses[baseline], seed, shuffle_positions)
    wr = win_rate(outcomes)
    return {f"{prefix}win_rate": wr.rate, f"{prefix}win_rate_ci95": [wr.low, wr.high]}


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return M.finite_or_none(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
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


def render_table(results: Mapping[str, Mapping[str, Any]], baseline: str, print_table: bool = True) -> str:
    """Print the results as a rich table (when ``print_table``); return its plain-text form for ``table.txt``."""
    from rich.console import Console
    from rich.table import Table

    shown = {"n", "win_rate", "win_rate_ci95", "rm_win_rate", "rm_win_rate_ci95"}
    rates = {"eos_rate", "truthfulqa_mc1", "gsm8k_accuracy", "fewshot_accuracy"}
    unmeasured = {k for k in ("fewshot_accuracy",) if all(f.get(k) is None for f in results.values())}  # not shown
    extra = [k for k in dict.fromkeys(k for f in results.values() for k in f) if k not in shown | unmeasured]
    table = Table(title=f"Evaluation against {baseline} (win rates with 95% Wilson intervals, ties half)")
    headers = {"response_tokens": "resp. tokens", "eos_rate": "EOS rate", f"kl_to_{baseline}": f"KL to {baseline}",
               "lm_loss": "LM loss", "truthfulqa_mc1": "TruthfulQA MC1", "gsm8k_accuracy": "GSM8K",
               "fewshot_accuracy": "few-shot"}  # fmt: skip
    for column in ["policy", "n", "win rate", "RM win rate", *[headers.get(k, k) for k in extra]]:
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, figures in results.items():
        cells = [_fmt(figures.get(k), pct=k in rates or k.endswith("_rate")) for k in extra]
        table.add_row(name, str(figures["n"]), _fmt_rate(figures, "win_rate"), _fmt_rate(figures, "rm_win_rate"),
                      *cells)  # fmt: skip
    if print_table:
        Console().print(table)
    recorder = Console(record=True, width=200, file=io.StringIO())
    recorder.print(table)
    return recorder.export_text()


def write_outputs(
    output_dir: Path,
    results: Mapping[str, Any],
    settings: Mapping[str, Any],
    table_text: str,
    prompts: Sequence[EvalPrompt],
    responses: Mapping[str, list[str]],
) -> None:
    """Write results, plot, table, samples and settings into ``output_dir``, replacing it only when all are done."""
    from lit_rlhf.models import atomic_directory

    with atomic_directory(output_dir) as tmp:
        (tmp / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
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
    """Log figures (``eval/<policy>/<figure>``), settings, and for W&B the table and the plot."""
    metrics = {}
    for name, figures in results.items():
        for key, value in figures.items():
            if isinstance(value, list) and len(value) == 2:
                metrics[f"eval/{name}/{key}_low"], metrics[f"eval/{name}/{key}_high"] = value
            elif isinstance(value, (int, float)) and value is not None:
                metrics[f"eval/{name}/{key}"] = value
    logger.log_hyperparams({"evaluate": dict(settings)})
    logger.log_metrics(metrics, step=0)
    keys = list(dict.fromkeys(k for f in results.values() for k in f))
    if hasattr(logger, "log_table"):
        data = [[name, *[json.dumps(f.get(k)) if isinstance(f.get(k), list) else f.get(k) for k in keys]]
                for name, f in results.items()]  # fmt: skip
        logger.log_table(key="eval/results", columns=["policy", *keys], data=data)
    if plot is not None and plot.is_file() and hasattr(logger, "log_image"):
        logger.log_image(key="eval/win_rates", images=[str(plot)])
    logger.save()


__all__ = ["PLOT_FILE", "RESULTS_FILE", "check_options", "evaluate", "log_results", "render_table", "write_outputs"]

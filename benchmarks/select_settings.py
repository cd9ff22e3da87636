"""Choose the demo's PPO settings on the development slice, judged by the training labelers: never on the evaluation
prompts, never by the held-out panel.

    python benchmarks/select_settings.py --name demo-seed0        # runs/demo-seed0; ~12 minutes on a 2-core CPU

It runs the pipeline (``-c configs/pipeline/demo.yaml`` unless ``--config`` says otherwise; with ``--seed``,
``--name`` and ``--runs_dir``) up to its reward model, skipping the stages already done. Then it measures how often
greedy SFT shows each of the writers' habits on the world's ``dev/prompts.jsonl`` (ignoring a constraint, a
preamble, padding: a habit greedy SFT does not reproduce gives PPO nothing to win), trains PPO once per candidate
(a grid of iterations, KL coefficients and learning rates), PPO-ptx once per candidate ptx coefficient (gamma,
with the chosen PPO settings) and DPO once per candidate (beta x learning rate x epochs) from the pipeline's own
stage configs, only the setting under test changed, and
evaluates every candidate against the SFT policy on the dev prompts (inputs that no stage trained on and the
evaluation never sees) with ``lit_rlhf.world.labelers:dev_judge`` (a panel of the training labelers, the people a
team can ask). It prints a table and writes ``<run>/selection/selection.json``.

The rule, fixed before any candidate ran: the highest dev win rate wins; a candidate within ``--margin`` (default
one point) of the best counts as equal, and among equals the first listed is taken (the lists run from the most
conservative setting: fewer iterations, the larger KL coefficient, the smaller learning rate, the larger gamma, which
pays less alignment tax; for DPO the larger beta, the smaller learning rate, fewer epochs; for best-of-n of SFT, the
smaller n, which moves less KL). DPO and best-of-n are chosen on their own (their grids do not depend on PPO's);
``--dpo_betas ''`` and ``--best_of_ns ''`` skip them.

The critic-free estimators (``--cf_estimators``, default RLOO and GRPO) are chosen each on its own, over
``--cf_learning_rates`` (smallest first), at PPO's chosen KL coefficient and PPO's episode budget: the same iterations
with ``samples_per_prompt`` samples of ``16 / samples_per_prompt`` prompts each, so every method sees as many
episodes as PPO. With ``--grids`` naming no ``ppo``, PPO's settings are the pipeline's PPO config (already chosen),
and only the grids named run: ``--grids critic_free`` chooses the critic-free settings alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lit_rlhf.pipeline import CRITIC_FREE_STAGES, StageSpec, WorldPipeline

DEV_JUDGE = "lit_rlhf.world.labelers:dev_judge"
WORLD_METRICS = "lit_rlhf.world.labelers:RESPONSE_METRICS"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help="pipeline configs, in order (default: the demo's)")
    parser.add_argument("--name", default="demo", help="the pipeline run's name")
    parser.add_argument("--runs_dir", default="runs")
    parser.add_argument("--seed", type=int, default=None, help="the pipeline's --seed (default: the config's)")
    parser.add_argument("--learning_rates", default="3e-5,1e-4", help="PPO candidates, conservative first")
    parser.add_argument("--iterations", default="40,80", help="PPO iterations (16 prompts each), fewest first")
    parser.add_argument("--kl_coefs", default="0.1,0.02", help="KL coefficients (beta), largest first")
    parser.add_argument("--ptx_coefs", default="2.0,0.5,0.1", help="PPO-ptx gamma candidates, conservative first")
    parser.add_argument("--dpo_betas", default="0.5,0.1", help="DPO beta candidates, largest first ('' skips DPO)")
    parser.add_argument("--dpo_learning_rates", default="1e-4,3e-4", help="DPO learning rates, smallest first")
    parser.add_argument("--dpo_epochs", default="1,2", help="DPO epochs over the comparisons, fewest first")
    parser.add_argument("--best_of_ns", default="4,16,64", help="best-of-n candidates, smallest first ('' skips)")
    parser.add_argument("--cf_estimators", default="rloo,grpo", help="critic-free estimators ('' skips them)")
    parser.add_argument("--cf_learning_rates", default="3e-5,1e-4,3e-4", help="their learning rates, smallest first")
    parser.add_argument("--cf_samples_per_prompt", type=int, default=4, help="their k (Ahmadian et al.: 4)")
    parser.add_argument(
        "--grids", default="ppo,ppo_ptx,dpo,best_of_n,critic_free", help="which grids run (PPO's is the others' base)"
    )
    parser.add_argument("--margin", type=float, default=0.01, help="dev win rates this close to the best are equal")
    parser.add_argument("--max_dev_prompts", type=int, default=None, help="use at most this many dev prompts")
    return parser.parse_args(argv)


def pipeline_configs(args: argparse.Namespace) -> Path:
    """Run the pipeline up to its reward model (finished stages are skipped); write the merged configs of its PPO
    and PPO-ptx stages as the pipeline would run them. The run directory."""
    configs = args.config or ["configs/pipeline/demo.yaml"]
    merged: dict[str, Any] = {}
    for path in configs:  # later files replace earlier top-level keys, as the CLI's -c does
        merged.update(yaml.safe_load(Path(path).read_text()))
    seed = merged.get("seed", 0) if args.seed is None else args.seed
    cmd = [sys.executable, "-m", "lit_rlhf.cli", "pipeline", *[x for c in configs for x in ("-c", c)]]
    cmd += ["--name", args.name, "--runs_dir", args.runs_dir, "--seed", str(seed), "--until", "rm", "--wandb", "false"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    specs = {stage: StageSpec(**merged[stage]) for stage in ("pretrain", "sft", "rm", "ppo", "ppo_ptx", "evaluate")}
    world, comparisons = merged.get("world") or {}, merged.get("comparisons") or {}
    pipeline = WorldPipeline(args.name, args.runs_dir, seed, world, specs, comparisons, 3, wandb=False)
    for stage in ("ppo", "ppo_ptx"):
        pipeline.fit_config(stage, *pipeline.ppo_wiring())
    if args.cf_estimators:  # the critic-free bases: the pipeline's stage configs, else the tiny ones
        for stage in CRITIC_FREE_STAGES:
            pipeline.stages[stage] = StageSpec(**(merged.get(stage) or {"config": f"configs/{stage}/tiny.yaml"}))
            pipeline.fit_config(stage, *pipeline.ppo_wiring())
    if args.dpo_betas:
        pipeline.stages["dpo"] = StageSpec(**merged.get("dpo", {"config": "configs/dpo/tiny.yaml"}))
        pipeline.fit_config("dpo", *pipeline.dpo_wiring())
    return pipeline.root


def load_stage_config(run: Path, stage: str) -> dict[str, Any]:
    return yaml.safe_load((run / "configs" / f"{stage}.yaml").read_text())


def train_candidate(
    base: dict[str, Any],
    out: Path,
    name: str,
    init_args: dict[str, Any],
    iterations: int | None = None,
    epochs: int | None = None,
) -> Path:
    """Train one candidate from ``base`` (a merged stage config) with ``init_args`` (and the number of PPO iterations
    or of epochs) changed; return its export."""
    export = out / name / "hf"
    if (export / "lit_rlhf.json").is_file():
        print(f"{name}: already trained, {export}")
        return export
    config = json.loads(json.dumps(base))  # a deep copy
    config["model"]["init_args"].update(init_args, export_dir=str(export))
    config["trainer"].update(default_root_dir=str(out / name), logger=False, enable_progress_bar=False)
    config["trainer"].pop("checkpoint_every_n_steps", None)
    if iterations is not None:
        config["trainer"]["limit_train_batches"] = iterations
    if epochs is not None:
        config["trainer"]["max_epochs"] = epochs
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"{name}: lit-rlhf fit -c {path}", flush=True)
    subprocess.run([sys.executable, "-m", "lit_rlhf.cli", "fit", "-c", str(path)], check=True)
    return export


def dev_evaluate(
    run: Path,
    out: Path,
    policies: dict[str, Path],
    max_prompts: int | None,
    name: str = "dev_eval",
    best_of_n: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Every policy (and best-of-n of SFT, name -> n, picked by the run's RM) against ``sft`` on the dev slice,
    judged by the training labelers; the results by policy."""
    eval_dir = out / name
    config = {
        "policies": {name: str(path) for name, path in policies.items()},
        "baseline": "sft",
        "prompts_file": str(run / "world" / "dev" / "prompts.jsonl"),
        "judge": DEV_JUDGE,
        "response_metrics": WORLD_METRICS,
        "group_by": "constrained",
        "output_dir": str(eval_dir),
        "max_examples": max_prompts,
        "max_new_tokens": 32,
        "trainer": {"logger": False},
    }
    if best_of_n:
        config["rm_dir"] = str(run / "rm" / "hf")
        config["best_of_n"] = {bon: {"n": n, "policy": "sft"} for bon, n in best_of_n.items()}
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([sys.executable, "-m", "lit_rlhf.cli", "evaluate", "-c", str(path)], check=True)
    return json.loads((eval_dir / "results.json").read_text())


def sft_habits(run: Path, out: Path, sft: Path, max_prompts: int | None) -> dict[str, float | None]:
    """How often greedy SFT shows each habit of the writers on the dev slice, measured before any PPO run: a habit
    it does not reproduce gives PPO nothing to win."""
    sft_results = dev_evaluate(run, out, {"sft": sft}, max_prompts, name="sft_habits")["sft"]
    following = sft_results.get("constraint_following_rate")
    habits = {
        "ignores_constraint": None if following is None else 1 - following,
        "preamble": sft_results.get("preamble_rate"),
        "padding": sft_results.get("padding_rate"),
    }
    shown = ", ".join(f"{k} {'-' if v is None else f'{100 * v:.1f}%'}" for k, v in habits.items())
    print(f"greedy SFT on the dev slice, before any PPO run: {shown}", flush=True)
    return habits


def choose(results: dict[str, Any], names: list[str], margin: float) -> str:
    """The first of ``names`` whose dev win rate is within ``margin`` of the best."""
    best = max(results[n]["win_rate"] for n in names)
    return next(n for n in names if results[n]["win_rate"] >= best - margin)


def critic_free_grid(
    args: argparse.Namespace, run: Path, out: Path, ppo: dict[str, Any], policies: dict[str, Path]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, dict[str, Any]]]:
    """Each critic-free estimator over its learning rates at PPO's KL coefficient, episodes and minibatch (``ppo``:
    PPO's chosen iterations and kl_coef, its prompts per iteration and its minibatch sizes); the candidates, their dev
    results and the choice per estimator."""
    k = args.cf_samples_per_prompt
    if ppo["prompts"] % k:
        raise SystemExit(f"--cf_samples_per_prompt={k} must divide PPO's {ppo['prompts']} prompts per iteration")
    grid = {
        f"{e}_k{k}_lr{float(lr):g}": {"estimator": e, "learning_rate": float(lr)}
        for e in args.cf_estimators.split(",")
        for lr in args.cf_learning_rates.split(",")
    }
    for name, c in grid.items():
        base = load_stage_config(run, c["estimator"] if c["estimator"] in CRITIC_FREE_STAGES else "rloo")
        base["data"]["init_args"]["batch_size"] = ppo["prompts"] // k  # PPO's episodes per iteration
        init_args = {"advantage_estimator": c["estimator"], "samples_per_prompt": k, "kl_coef": ppo["kl_coef"]}
        init_args |= {"learning_rate": c["learning_rate"], "minibatch_size": ppo["minibatch_size"], "warmup": 0}
        init_args["micro_batch_size"] = ppo["micro_batch_size"]
        policies[name] = train_candidate(base, out, name, init_args, ppo["iterations"])
    cf_policies = {name: policies[name] for name in ("sft", *grid)}
    results = dev_evaluate(run, out, cf_policies, args.max_dev_prompts, name="dev_eval_critic_free")
    choice = {}
    for e in args.cf_estimators.split(","):
        names = [n for n, c in grid.items() if c["estimator"] == e]
        picked = grid[choose(results, names, args.margin)]
        choice[e] = {"samples_per_prompt": k, "prompts_per_iteration": ppo["prompts"] // k, **picked}
        choice[e] |= {"iterations": ppo["iterations"], "kl_coef": ppo["kl_coef"]}
    return grid, results, choice


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    grids = set(args.grids.split(","))
    run = pipeline_configs(args)
    out = run / "selection"
    ppo_base = load_stage_config(run, "ppo")
    ptx_base = load_stage_config(run, "ppo_ptx")
    ppo_config = {  # PPO's settings as the pipeline's config has them: the others' base when PPO's grid is not run
        "iterations": ppo_base["trainer"]["limit_train_batches"],
        "kl_coef": ppo_base["model"]["init_args"]["kl_coef"],
        "learning_rate": ppo_base["model"]["init_args"]["learning_rate"],
    }
    grid = [
        {"iterations": int(n), "kl_coef": float(kl), "learning_rate": float(lr)}
        for n in args.iterations.split(",")
        for kl in args.kl_coefs.split(",")
        for lr in args.learning_rates.split(",")
    ]
    gammas = [float(x) for x in args.ptx_coefs.split(",")] if "ppo_ptx" in grids else []

    candidates = {f"ppo_it{c['iterations']}_kl{c['kl_coef']:g}_lr{c['learning_rate']:g}": c for c in grid}
    if "ppo" not in grids:
        candidates = {}
    policies = {"sft": Path(ppo_base["model"]["init_args"]["model_name_or_path"])}
    habits = sft_habits(run, out, policies["sft"], args.max_dev_prompts)
    for name, c in candidates.items():
        init_args = {"learning_rate": c["learning_rate"], "kl_coef": c["kl_coef"]}
        policies[name] = train_candidate(ppo_base, out, name, init_args, c["iterations"])
    results = dev_evaluate(run, out, policies, args.max_dev_prompts) if candidates else {}
    ppo_choice = candidates[choose(results, list(candidates), args.margin)] if candidates else ppo_config

    gamma_names = {f"ppo_ptx_gamma{g:g}": g for g in gammas}
    gamma_choice = None
    for name, gamma in gamma_names.items():
        init_args = {"learning_rate": ppo_choice["learning_rate"], "kl_coef": ppo_choice["kl_coef"], "ptx_coef": gamma}
        policies[name] = train_candidate(ptx_base, out, name, init_args, ppo_choice["iterations"])
    # Only SFT and the new candidates are generated again: the PPO candidates' results stand.
    ptx_policies = {name: policies[name] for name in ("sft", *gamma_names)}
    if gamma_names:
        results |= dev_evaluate(run, out, ptx_policies, args.max_dev_prompts, name="dev_eval_ptx")
        gamma_choice = gamma_names[choose(results, list(gamma_names), args.margin)]

    dpo_grid = {
        f"dpo_beta{float(b):g}_lr{float(lr):g}_ep{int(e)}": {
            "beta": float(b),
            "learning_rate": float(lr),
            "epochs": int(e),
        }
        for e in (args.dpo_epochs.split(",") if args.dpo_betas and "dpo" in grids else [])
        for b in args.dpo_betas.split(",")
        for lr in args.dpo_learning_rates.split(",")
    }
    dpo_choice = None
    if dpo_grid:
        dpo_base = load_stage_config(run, "dpo")
        for name, c in dpo_grid.items():
            init_args = {"beta": c["beta"], "learning_rate": c["learning_rate"]}
            policies[name] = train_candidate(dpo_base, out, name, init_args, epochs=c["epochs"])
        dpo_policies = {name: policies[name] for name in ("sft", *dpo_grid)}
        results |= dev_evaluate(run, out, dpo_policies, args.max_dev_prompts, name="dev_eval_dpo")
        dpo_choice = dpo_grid[choose(results, list(dpo_grid), args.margin)]

    bon_grid = {f"best_of_{int(n)}": int(n) for n in args.best_of_ns.split(",") if n and "best_of_n" in grids}
    bon_choice = None
    if bon_grid:
        results |= dev_evaluate(run, out, {"sft": policies["sft"]}, args.max_dev_prompts, "dev_eval_bon", bon_grid)
        bon_choice = bon_grid[choose(results, list(bon_grid), args.margin)]

    cf_grid, cf_choice = {}, None
    if args.cf_estimators and "critic_free" in grids:
        ppo_model = ppo_base["model"]["init_args"]  # PPO's episodes per iteration and per optimizer step
        ppo_episodes = {**ppo_choice, "prompts": ppo_base["data"]["init_args"]["batch_size"]}
        ppo_episodes |= {
            "minibatch_size": ppo_model["minibatch_size"],
            "micro_batch_size": ppo_model["micro_batch_size"],
        }
        cf_grid, cf_results, cf_choice = critic_free_grid(args, run, out, ppo_episodes, policies)
        results |= cf_results

    rows = []
    for name in [*candidates, *gamma_names, *dpo_grid, *bon_grid, *cf_grid]:
        r = results[name]
        lo, hi = r["win_rate_ci95"]
        rows.append(
            {
                "candidate": name,
                "dev_win_rate": r["win_rate"],
                "ci95": [lo, hi],
                "wins_ties_losses": [r["wins"], r["ties"], r["losses"]],
                "constraint_following_rate": r.get("constraint_following_rate"),
                "kl_to_sft": r.get("kl_to_sft"),
            }
        )
        print(
            f"{name:24s} dev win {100 * r['win_rate']:5.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}]  "
            f"W/T/L {r['wins']}/{r['ties']}/{r['losses']}  constraint following "
            f"{r.get('constraint_following_rate')}  (SFT {results['sft'].get('constraint_following_rate')})"
        )
    selection = {
        "run": str(run),
        "judge": DEV_JUDGE,
        "prompts": str(run / "world" / "dev" / "prompts.jsonl"),
        "sft_habits": habits,
        "rule": f"highest dev win rate; within {args.margin} of the best counts as equal; first listed among equals",
        "grids": sorted(grids),
        **ppo_choice,
        "ptx_coef": gamma_choice,
        "dpo": dpo_choice,
        "best_of_n": bon_choice,
        "critic_free": cf_choice,
        "candidates": rows,
    }
    (out / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    print(f"chosen: {ppo_choice}, ptx_coef {gamma_choice}, DPO {dpo_choice}, best-of-n {bon_choice}")
    print(f"critic-free: {cf_choice}")
    print(f"wrote {out / 'selection.json'}")


if __name__ == "__main__":
    main()

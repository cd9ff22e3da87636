"""The ``lit-rlhf evaluate`` subcommand: a method of :class:`lit_rlhf.cli.LitRLHFTrainer` (LightningCLI builds the
subcommand's options from its signature and its docstring becomes ``--help``)."""

from __future__ import annotations

import os
from typing import Any

import lightning as L

from lit_rlhf.data.collate import Template


def evaluate_command(
    self: L.Trainer,
    model: Any = None,
    datamodule: Any = None,
    *,
    policies: dict[str, str],
    prompts_file: str | list[str],
    baseline: str = "sft",
    judge: str | None = None,
    rm_dir: str | None = None,
    output_dir: str = "runs/evaluate",
    pretraining_file: str | list[str] | None = None,
    truthfulqa_file: str | None = None,
    gsm8k_file: str | None = None,
    fewshot_file: str | list[str] | None = None,
    response_metrics: dict[str, str] | str | None = None,
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
) -> dict[str, dict[str, Any]]:
    """Evaluate policies against a baseline on held-out prompts: win rates (95% CI), KL, alignment tax.

    Writes results.json, win_rates.png, table.txt, samples.jsonl and settings.json into --output_dir and logs them
    to --trainer.logger (W&B, offline without a key; false for none). Runs on --trainer.accelerator's device;
    with --trainer.devices=N (--trainer.strategy=ddp or fsdp2) N processes split the prompts and examples, each
    holding whole models (greedy results equal one process's). Needs no --model or --data.

    Args:
        model: Unused (LightningCLI passes it to every subcommand).
        datamodule: Unused.
        policies: Policy name -> exported Hugging Face directory (with lit_rlhf.json), as a YAML mapping:
            '{sft: runs/sft/hf, ppo: runs/ppo/hf}'.
        prompts_file: Held-out prompts, {"prompt": str} or {"messages": [...]} records (extra keys are passed to
            judges); a path, glob or list.
        baseline: The policy every other one is compared with (InstructGPT: the SFT model).
        judge: Who decides which response is better: 'rm:DIR' or a directory (a reward model), or an import path
            'package.module:name' to a function (prompt, response_a, response_b) -> 1 / 0.5 / 0, or to an object
            with compare(prompts, responses_a, responses_b). None: no judged win rate.
        rm_dir: A reward model whose win rate is reported beside the judge's (rm_win_rate); the gap between the
            two shows over-optimisation.
        output_dir: Where the results go; replaced atomically.
        pretraining_file: Held-out pretraining text, {"text": str} records, for the LM loss (alignment tax).
        truthfulqa_file: TruthfulQA records (Question, Best Answer, Incorrect Answers) for MC1 by log-likelihood.
        gsm8k_file: GSM8K records (question, answer ending '#### <number>') for greedy accuracy.
        fewshot_file: Few-shot skill probes, {"prompt": str, "completion": str} records of raw text (no template),
            for fewshot_accuracy (alignment tax): the greedy continuation up to its first '.' or newline must equal
            the completion. 'python -m lit_rlhf.world' worlds: lit_rlhf.world.fewshot.write_fewshot_probes.
        response_metrics: Name -> import path of fn(prompt, response) -> bool | None (None: does not apply), or an
            import path to such a dict; each is reported as a rate per policy (e.g. toxic_rate).
        max_examples: Use at most this many prompts, texts, TruthfulQA and GSM8K questions, few-shot probes each;
            null: all.
        max_new_tokens: Longest response to a prompt.
        gsm8k_max_new_tokens: Longest response to a GSM8K question.
        do_sample: Sample responses (seeded) instead of greedy decoding.
        temperature: Sampling temperature (with --do_sample).
        top_p: Nucleus sampling threshold (with --do_sample).
        seed: Seed of sampling and of which comparisons are shown to the judge in swapped order.
        batch_size: Sequences per generate / forward call.
        template: Prompt template, as in training: 'auto' (the tokenizer's chat template if any) or 'plain' (HH).
        lm_max_length: Longest pretraining text, in tokens, for the LM loss.
        shuffle_positions: Show a seeded half of the pairs to the judge in swapped order, so a judge that prefers
            the first (or second) answer favours no policy.
    """
    from lit_rlhf.evaluation.evaluate import evaluate

    logger = self.logger if self.is_global_zero else None
    kwargs = dict(
        policies=policies,
        prompts_file=prompts_file,
        baseline=baseline,
        judge=judge,
        output_dir=output_dir,
        rm_dir=rm_dir,
        pretraining_file=pretraining_file,
        truthfulqa_file=truthfulqa_file,
        gsm8k_file=gsm8k_file,
        fewshot_file=fewshot_file,
        response_metrics=response_metrics,
        max_examples=max_examples,
        max_new_tokens=max_new_tokens,
        gsm8k_max_new_tokens=gsm8k_max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        template=template,
        lm_max_length=lm_max_length,
        shuffle_positions=shuffle_positions,
        logger=logger,
    )
    if self.world_size == 1:
        return evaluate(**kwargs, device=self.strategy.root_device)
    # --trainer.devices=N with ddp or fsdp2: N processes (started by the strategy's launcher, as for fit), each
    # generating for every N-th prompt with whole models; rank 0 judges and writes.
    # (No launcher where the processes were started outside: torchrun, SLURM, or this being a launched child.)
    launcher = self.strategy.launcher
    if launcher is None:
        return _evaluate_in_processes(self, kwargs)
    return launcher.launch(_evaluate_in_processes, self, kwargs, trainer=self)


def _evaluate_in_processes(trainer: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    import torch.distributed as dist

    from lit_rlhf.evaluation.evaluate import evaluate

    strategy = trainer.strategy  # ddp or fsdp2: the ranks as Lightning's launcher or torchrun/SLURM set them
    rank = strategy.node_rank * strategy.num_processes + strategy.local_rank
    world = strategy.num_nodes * strategy.num_processes
    env = strategy.cluster_environment
    env.set_global_rank(rank)
    env.set_world_size(world)
    if strategy.root_device.type == "cuda":
        import torch

        torch.cuda.set_device(strategy.root_device)
    os.environ.setdefault("MASTER_ADDR", env.main_address)
    os.environ.setdefault("MASTER_PORT", str(env.main_port))
    dist.init_process_group("nccl" if strategy.root_device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        return evaluate(**kwargs, device=trainer.strategy.root_device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["evaluate_command"]

"""The ``lit-rlhf evaluate`` and ``lit-rlhf overoptimization`` subcommands: methods of
:class:`lit_rlhf.cli.LitRLHFTrainer` (LightningCLI builds a subcommand's options from its signature and its docstring
becomes ``--help``)."""

from __future__ import annotations

import os
from typing import Any

import lightning as L

from lit_rlhf.evaluation.options import EvaluateOptions
from lit_rlhf.evaluation.overoptimization import OveroptimizationOptions


def evaluate_command(
    self: L.Trainer, model: Any = None, datamodule: Any = None, **options: Any
) -> dict[str, dict[str, Any]]:
    """Evaluate policies against a baseline on held-out prompts: win rates (95% CI), KL, alignment tax.

    Writes results.json, win_rates.png, table.txt, samples.jsonl and settings.json into --output_dir and logs them
    to --trainer.logger (W&B, offline without a key; false for none). Runs on --trainer.accelerator's device;
    with --trainer.devices=N (--trainer.strategy=ddp or fsdp2) N processes split the prompts and examples, each
    holding whole models (results equal one process's). Needs no --model or --data.

    Args:
        model: Unused (LightningCLI passes it to every subcommand).
        datamodule: Unused.
        options: The fields of :class:`lit_rlhf.evaluation.options.EvaluateOptions`, one flag each (LightningCLI
            reads them, with their help, from that class, since they are passed on to it).
    """
    from lit_rlhf.evaluation.evaluate import evaluate

    evaluate_options = EvaluateOptions(**options)
    logger = self.logger if self.is_global_zero else None
    if self.world_size == 1:
        return evaluate(evaluate_options, device=self.strategy.root_device, logger=logger)
    # --trainer.devices=N with ddp or fsdp2: N processes (started by the strategy's launcher, as for fit), each
    # generating for every N-th prompt with whole models; rank 0 judges and writes.
    # (No launcher where the processes were started outside: torchrun, SLURM, or this being a launched child.)
    launcher = self.strategy.launcher
    if launcher is None:
        return _evaluate_in_processes(self, evaluate_options, logger)
    return launcher.launch(_evaluate_in_processes, self, evaluate_options, logger, trainer=self)


def _evaluate_in_processes(trainer: Any, options: EvaluateOptions, logger: Any) -> dict[str, Any]:
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
        return evaluate(options, device=trainer.strategy.root_device, logger=logger)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def overoptimization_command(
    self: L.Trainer, model: Any = None, datamodule: Any = None, **options: Any
) -> dict[str, Any]:
    """Reward-model over-optimisation (Gao et al. 2022): gold and proxy score against sqrt(KL) from the SFT policy.

    For best-of-n of the SFT policy and for RL checkpoints, with Gao et al.'s fits. Writes overoptimization.json and overoptimization.png into --output_dir and logs the fits to --trainer.logger
    (false for none). Runs in one process on --trainer.accelerator's device. Needs no --model or --data.

    Args:
        model: Unused (LightningCLI passes it to every subcommand).
        datamodule: Unused.
        options: The fields of :class:`lit_rlhf.evaluation.overoptimization.OveroptimizationOptions`, one flag each.
    """
    from lit_rlhf.evaluation.overoptimization import overoptimization

    if self.world_size > 1:
        raise ValueError("lit-rlhf overoptimization runs in one process: drop --trainer.devices / --trainer.strategy")
    return overoptimization(OveroptimizationOptions(**options), device=self.strategy.root_device, logger=self.logger)


__all__ = ["evaluate_command", "overoptimization_command"]

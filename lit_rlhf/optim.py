"""Optimiser and learning-rate schedule shared by the stages."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_lambda(warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """LR multiplier: linear warmup from 0 to 1 over ``warmup_steps``, then cosine decay to ``min_lr_ratio``.

    InstructGPT decays SFT and RM learning rates to 10% of the peak (``min_lr_ratio=0.1``). ``total_steps <= 0``
    (unknown length) keeps the peak after warmup.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def resolve_warmup(warmup: float, total_steps: int) -> int:
    """``warmup`` below 1 is a fraction of ``total_steps``; from 1 up, a step count."""
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    return int(round(warmup * total_steps)) if warmup < 1 else int(warmup)


def weight_decay_groups(model: nn.Module, weight_decay: float, **options: float) -> list[dict]:
    """AdamW parameter groups of ``model``'s trainable parameters: weight decay on matrices, none on biases and norms.

    ``options`` (e.g. ``lr``) go into every group. Empty groups are left out.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, **options},
        {"params": no_decay, "weight_decay": 0.0, **options},
    ]
    return [g for g in groups if g["params"]]


def adamw_with_schedule(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup: float,
    total_steps: int,
    min_lr_ratio: float,
) -> dict:
    """AdamW (no weight decay on biases and norms) with warmup + cosine, in Lightning's optimizer-dict form."""
    optimizer = torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=learning_rate, betas=betas)
    warmup_steps = resolve_warmup(warmup, total_steps)
    scheduler = LambdaLR(optimizer, warmup_cosine_lambda(warmup_steps, total_steps, min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

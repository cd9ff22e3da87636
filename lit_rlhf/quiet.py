"""Lightning's messages that are known to be benign in lit_rlhf, silenced where they arise, each with its reason.

Everything else Lightning, transformers or lit_rlhf warns about still reaches the user: a log full of noise teaches
people to skip warnings, and then they miss the one that says records were dropped. Each silencer here is narrow (one
message, one condition) and tested to keep the neighbouring warnings (``tests/test_quiet_logs.py``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

from lit_rlhf.models import FROZEN_ATTRIBUTE

_TIP_PREFIX = "💡 Tip:"


class _NoProductTips(logging.Filter):
    """Drop Lightning's tips to install its cloud products (LitLogger, LitModels): advertisements, not about the run;
    lit_rlhf logs to W&B (offline without a key) or CSV, and saves Hugging Face directories."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


def silence_product_tips() -> None:
    """Install the filter once on the loggers Lightning prints its tips through (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoProductTips) for f in logger.filters):
            logger.addFilter(_NoProductTips())


def silence_lightning_pytree_deprecation() -> None:
    """Lightning 2.6's own call of ``isinstance(treespec, LeafSpec)``, deprecated by torch 2.10+: a note for
    Lightning's developers, printed once per run; nothing in a user's code or config can change it."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def unfrozen_eval_modules(model: nn.Module) -> list[str]:
    """Names of the submodules of ``model`` in eval mode that are not inside a model :func:`freeze` froze."""
    frozen: list[str] = []
    found = []
    for name, module in model.named_modules():
        if getattr(module, FROZEN_ATTRIBUTE, False):
            frozen.append(name + ".")
            continue
        if not module.training and not any((name + ".").startswith(f) for f in frozen):
            found.append(name)
    return found


def warn_only_about_unfrozen_eval_modules(fit_loop: Any) -> None:
    """Replace the fit loop's "Found N module(s) in eval mode at the start of training" check by one that leaves out
    the frozen models: PPO's reference and reward model and DPO's reference are in eval mode on purpose (dropout off,
    no gradients), so Lightning's warning named 60-120 modules on every such run. A module in eval mode that nobody
    froze still gets Lightning's warning, with its text."""
    if not hasattr(fit_loop, "_warn_if_modules_in_eval_mode"):  # Lightning changed: keep its own check
        return

    def check() -> None:
        found = unfrozen_eval_modules(fit_loop.trainer.lightning_module)
        if found:
            rank_zero_warn(
                f"Found {len(found)} module(s) in eval mode at the start of training. This may lead to unexpected"
                f" behavior during training. If this is intentional, you can ignore this warning ({found[:3]}...)."
            )

    fit_loop._warn_if_modules_in_eval_mode = check


class IterationCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint without its note for manual optimisation ("Using ModelCheckpoint with manual
    optimization and every_n_train_steps, but no pre-optimization state was saved", 14 lines with example code).

    The note is about saving the weights from before an optimizer step. PPO's ``training_step`` is a whole iteration
    (rollout, then every update), and its checkpoint is meant to hold the weights after that iteration's updates:
    ``--ckpt_path=last`` then starts the next iteration, exactly as the unbroken run does (``tests/test_resume.py``).
    """

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        if pl_module.automatic_optimization:
            return super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            return super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

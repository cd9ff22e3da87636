"""Lightning's Trainer with checkpoints where a resume finds them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_rlhf.quiet import (
    IterationCheckpoint,
    silence_lightning_pytree_deprecation,
    silence_product_tips,
    warn_only_about_unfrozen_eval_modules,
)


class Trainer(L.Trainer):
    """Lightning's Trainer; every ``--trainer.*`` option of it works as usual, plus ``checkpoint_every_n_steps``.

    Unless checkpointing is off (``--trainer.enable_checkpointing=false``) or a ``ModelCheckpoint`` is given, the
    checkpoints go to ``<default_root_dir>/checkpoints/``, with ``last.ckpt`` always the newest, so
    ``--ckpt_path=last`` resumes the run (Lightning's default puts them under the logger's run id, a new one every
    run, where "last" never finds them).

    Args:
        checkpoint_every_n_steps: Also save mid-epoch, every this many optimizer steps (for PPO a multiple of the
            optimizer steps of one iteration, ``ppo_epochs x rollout / minibatch_size``); None saves at the end of
            each epoch only.
        **kwargs: The options of ``lightning.Trainer``.
    """

    def __init__(self, checkpoint_every_n_steps: int | None = None, **kwargs: Any) -> None:
        if checkpoint_every_n_steps is not None and checkpoint_every_n_steps < 1:
            raise ValueError(f"--trainer.checkpoint_every_n_steps must be >= 1 or null, got {checkpoint_every_n_steps}")
        callbacks = kwargs.get("callbacks") or []
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        if kwargs.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            root = Path(kwargs.get("default_root_dir") or os.getcwd())
            callbacks.append(
                IterationCheckpoint(
                    dirpath=root / "checkpoints", save_last=True, every_n_train_steps=checkpoint_every_n_steps
                )
            )
            kwargs["callbacks"] = callbacks
        elif checkpoint_every_n_steps is not None and kwargs.get("enable_checkpointing") is False:
            raise ValueError("--trainer.checkpoint_every_n_steps needs --trainer.enable_checkpointing=true")
        silence_product_tips()
        silence_lightning_pytree_deprecation()
        super().__init__(**kwargs)
        warn_only_about_unfrozen_eval_modules(self.fit_loop)

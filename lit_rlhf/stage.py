"""What the stage modules share: the final Hugging Face export, the batch-size report and the loss guard."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lit_rlhf.distributed import (
    full_state_dict,
    is_fsdp2,
    mixed_precision_dtype,
    shard_model,
    strategy_problem,
    unsharded_peft_copy,
)
from lit_rlhf.models import export_pretrained

log = logging.getLogger(__name__)


class StageModule(L.LightningModule):
    """Base of SFTModule, RewardModule and PPOModule.

    Subclasses set ``self.model`` (the trained model), ``self.tokenizer`` and ``self.stage`` and may extend
    :meth:`export_metadata`.
    """

    stage = "stage"
    export_dir: str | None

    def resolved_export_dir(self) -> Path:
        """``export_dir``, or ``<trainer.default_root_dir>/hf`` when unset."""
        if self.export_dir:
            return Path(self.export_dir)
        return Path(self.trainer.default_root_dir) / "hf"

    def export_metadata(self) -> dict[str, Any]:
        return {"stage": self.stage, "hparams": dict(self.hparams), "global_step": self.global_step}

    def setup(self, stage: str) -> None:
        self.check_strategy()

    def check_strategy(self) -> None:
        """Refuse a strategy the stages cannot run under, naming the supported ones.

        Runs in ``setup``, before the model is built, wrapped or sharded: every rank raises the same error before any
        collective of ours, so a bad strategy stops the run instead of hanging it.
        """
        problem = strategy_problem(self.trainer.strategy, self.trainer.precision)
        if problem is not None:
            raise ValueError(problem)

    def on_fit_start(self) -> None:
        self.report_batch_sizes()

    def report_batch_sizes(self) -> None:
        """Print the micro-batch and the batch of one optimizer step, so nobody has to guess which is which."""
        trainer = self.trainer
        dm = trainer.datamodule
        micro = getattr(dm, "batch_size", None)
        if micro is None or not trainer.is_global_zero:
            return
        world = trainer.world_size
        accumulate = trainer.accumulate_grad_batches
        log.info(
            "batch sizes: micro-batch %d per process x %d process(es) x %d accumulation = %d per optimizer step",
            micro, world, accumulate, micro * world * accumulate,
        )  # fmt: skip

    def on_fit_end(self) -> None:
        if self.trainer.interrupted:
            log.warning("training was interrupted: no Hugging Face export written")
            return
        self.export()

    def export(self) -> Path | None:
        """Write the trained model as a Hugging Face directory (rank 0; atomic)."""
        path = self.resolved_export_dir()
        state_dict = full_state_dict(self.model)  # gathered from every rank when FSDP2 shards the model
        if self.trainer.is_global_zero:
            model = self.model
            if state_dict is not None and hasattr(model, "peft_config"):  # LoRA under FSDP2: merge in a plain copy
                model, state_dict = unsharded_peft_copy(model, state_dict), None
            export_pretrained(model, self.tokenizer, path, self.export_metadata(), state_dict=state_dict)
            print(f"[lit-rlhf] {self.stage}: Hugging Face model written to {path}")
        self.trainer.strategy.barrier("export")
        return path

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """Shard ``model`` with FSDP2 when the strategy is ``fsdp2`` (call at the end of ``configure_model``)."""
        if self._trainer is not None and is_fsdp2(self.trainer.strategy):
            dtype = mixed_precision_dtype(self.trainer.precision)
            shard_model(model, self.device_mesh["data_parallel"], mixed_precision=dtype)
        return model

    def check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop on a non-finite loss, naming the step; the last good checkpoint is left as it was."""
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"non-finite loss ({loss.detach().float().cpu().tolist()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}). No export was written; the last saved "
                "checkpoint is unchanged. Lower --model.learning_rate, enable gradient clipping "
                "(--trainer.gradient_clip_val) or check the data."
            )

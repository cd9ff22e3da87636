"""What the stage modules share: the final Hugging Face export, the batch-size report, the loss guard, and the
model and optimiser options of the stages that fine-tune one model (SFT, reward model)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

from lit_rlhf.data.modules import PreferenceDataModule, SFTDataModule
from lit_rlhf.data.prompts import PromptDataModule
from lit_rlhf.distributed import (
    full_state_dict,
    is_fsdp2,
    mixed_precision_dtype,
    shard_model,
    strategy_problem,
    unsharded_peft_copy,
)
from lit_rlhf.loggers import WandbLogger
from lit_rlhf.models import (
    LoraOptions,
    check_tokenizer,
    count_parameters,
    export_pretrained,
    load_model,
    load_tokenizer,
    lora_to_dict,
    missing_local_path,
    scratch_tokenizer_problem,
)
from lit_rlhf.optim import adamw_with_schedule

log = logging.getLogger(__name__)

STAGE_DATA_MODULES: dict[str, tuple[type[L.LightningDataModule], ...]] = {
    "sft": (SFTDataModule,),
    "rm": (PreferenceDataModule,),
    "dpo": (PreferenceDataModule,),
    "ppo": (PromptDataModule,),
}
"""The DataModule(s) each stage (``StageModule.stage``) trains on; subclasses of them count too."""


class StageModule(L.LightningModule):
    """Base of SFTModule, RewardModule, DPOModule and PPOModule.

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
        self.check_data_module()
        self.check_model_paths()
        if stage == "fit":
            self.fit_validation_into_the_epoch()

    def fit_validation_into_the_epoch(self) -> None:
        """Validate at the end of the epoch when ``--trainer.val_check_interval`` (in batches) is longer than it.

        Lightning stops with a ValueError then; but a config's interval is for its own data and device count, and the
        same config on a smaller file or on more processes (fewer batches each) should still train.
        """
        trainer = self.trainer
        interval = trainer.val_check_interval
        if not isinstance(interval, int) or trainer.limit_val_batches == 0 or trainer.datamodule is None:
            return
        if not is_overridden("validation_step", self):
            return
        n_batches = len(trainer.datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        n_batches = min(n_batches, limit) if isinstance(limit, int) else int(n_batches * limit)
        if interval > n_batches:
            log.warning(
                "--trainer.val_check_interval=%d is longer than an epoch (%d batches per process): validating at the "
                "end of each epoch instead",
                interval, n_batches,
            )  # fmt: skip
            trainer.val_check_interval = 1.0

    def check_strategy(self) -> None:
        """Refuse a strategy the stages cannot run under, naming the supported ones.

        Runs in ``setup``, before the model is built, wrapped or sharded: every rank raises the same error before any
        collective of ours, so a bad strategy stops the run instead of hanging it.
        """
        problem = strategy_problem(self.trainer.strategy, self.trainer.precision)
        if problem is not None:
            raise ValueError(problem)

    def check_data_module(self) -> None:
        """Refuse a DataModule whose batches this stage cannot read, naming both (an SFTModule given preference
        batches would otherwise stop in validation with ``KeyError: 'labels'``)."""
        dm = self.trainer.datamodule
        accepted = STAGE_DATA_MODULES.get(self.stage, ())
        if dm is None or not accepted or isinstance(dm, accepted):
            return
        names = " or ".join(cls.__name__ for cls in accepted)
        raise ValueError(
            f"{type(self).__name__} trains on {names} records; got {type(dm).__name__} (--data): choose "
            f"--data={accepted[0].__name__} or the --model that reads these records"
        )

    def check_model_paths(self) -> None:
        """Refuse, before any model is loaded, a local-looking model or tokenizer path that does not exist, and a
        model built from scratch with no tokenizer named."""
        problems = [
            missing_local_path(self.hparams.get(key), f"--model.{key}")
            for key in ("model_name_or_path", "tokenizer_name_or_path", "reward_model_path", "value_model_path")
        ]
        problems = [p for p in problems if p is not None]
        if problems:
            raise FileNotFoundError("\n".join(problems))
        problem = scratch_tokenizer_problem(
            self.hparams.get("model_name_or_path"), self.hparams.get("tokenizer_name_or_path")
        )
        if problem is not None:
            raise ValueError(problem)

    def on_train_start(self) -> None:
        # From here on a failed run keeps its logs; one that fails before leaves no logger directory.
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.training_started = True

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

    def on_train_end(self) -> None:
        # The export is written as soon as training ends, before any callback's on_fit_end (Lightning calls those
        # after on_train_end): a report that fails there, such as a held-out check, costs the report, not the model.
        self._train_ended = True
        if self.trainer.interrupted:
            log.warning("training was interrupted: no Hugging Face export written")
            return
        self.export()

    def on_fit_end(self) -> None:
        # A fit with nothing to train (max_steps=0, a resumed run already at its end) never calls on_train_end.
        if not getattr(self, "_train_ended", False):
            self.on_train_end()

    def export(self, path: Path | None = None) -> Path | None:
        """Write the trained model as a Hugging Face directory (rank 0; atomic) at ``path``, default
        :meth:`resolved_export_dir`. Every rank calls it (under FSDP2 the weights are gathered from all)."""
        path = path or self.resolved_export_dir()
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


class FineTuningModule(StageModule):
    """Base of the stages that fine-tune one model with AdamW and warmup + cosine (SFT, the reward model, DPO).

    Subclasses take their own options and pass the rest on with ``**kwargs``; LightningCLI (jsonargparse) follows
    ``super().__init__(**kwargs)`` through the class hierarchy, so ``--help`` and ``--print_config`` show these
    options under ``--model.*`` while they are declared and documented only here.

    Args:
        model_name_or_path: The model to start from: a local directory, a hub id, or ``scratch:gpt2`` /
            ``scratch:llama`` to build one from scratch (sized by ``model_config``; needs a tokenizer).
        tokenizer_name_or_path: Tokenizer directory or hub id; defaults to ``model_name_or_path``. One other than a
            pretrained model's own is refused unless ``allow_other_tokenizer``.
        allow_other_tokenizer: Train a pretrained model with a tokenizer other than its own (embedding rows for
            tokens it lacks start at random).
        model_config: Config overrides, e.g. ``{n_layer: 4, n_embd: 128}`` for a scratch model.
        export_dir: Where the final Hugging Face directory goes; default ``<trainer.default_root_dir>/hf``.
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup: Linear warmup: a fraction of all steps when below 1, else a number of steps.
        min_lr_ratio: Cosine decay ends at this fraction of the peak (InstructGPT: 10%).
        dropout: Residual/attention/embedding dropout while training (InstructGPT SFT: 0.2); None keeps the
            model's own.
        dtype: Weights dtype: ``float32`` (default; use ``--trainer.precision=bf16-mixed`` for mixed precision),
            ``bfloat16``, ``float16``, ``float64`` or ``auto`` (the checkpoint's own).
        gradient_checkpointing: Recompute activations in backward to save memory.
        lora: Train LoRA adapters instead of all weights; the export has them merged. On the command line:
            ``--model.lora='{r: 16, alpha: 32}'`` or ``--model.lora.r=16`` (fields of ``LoraOptions``).
        trust_remote_code: Allow code from the model repository to run.
    """

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer_name_or_path: str | None = None,
        allow_other_tokenizer: bool = False,
        model_config: dict[str, Any] | None = None,
        export_dir: str | None = None,
        learning_rate: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup: float = 0.03,
        min_lr_ratio: float = 0.1,
        dropout: float | None = None,
        dtype: str | None = None,
        gradient_checkpointing: bool = False,
        lora: LoraOptions | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # the subclass's own options too: Lightning reads the whole __init__ chain
        self.check_model_paths()  # at once: before any data is read
        self.export_dir = export_dir
        self.model = None
        self.tokenizer = None

    def load_model_and_tokenizer(self, head: Literal["causal_lm", "score"], with_lora: bool) -> torch.nn.Module:
        """Load ``self.tokenizer`` and return the model with these options (LoRA-wrapped when ``with_lora``)."""
        hp = self.hparams
        tokenizer_flag = "--model.tokenizer_name_or_path" if hp.tokenizer_name_or_path else "--model.model_name_or_path"
        self.tokenizer = load_tokenizer(
            hp.tokenizer_name_or_path or hp.model_name_or_path, hp.trust_remote_code, flag=tokenizer_flag
        )
        check_tokenizer(
            hp.model_name_or_path, self.tokenizer, hp.tokenizer_name_or_path, hp.allow_other_tokenizer,
            hp.trust_remote_code,
        )  # fmt: skip
        model = load_model(
            hp.model_name_or_path,
            self.tokenizer,
            flag="--model.model_name_or_path",
            head=head,
            model_config=hp.model_config,
            dtype=hp.dtype,
            trust_remote_code=hp.trust_remote_code,
            dropout=hp.dropout,
            gradient_checkpointing=hp.gradient_checkpointing,
            lora=hp.lora if with_lora else None,
        )
        # from_pretrained returns eval mode, and Lightning keeps each submodule's mode through fit: without this,
        # a pretrained model would train with dropout silently off. Validation and generation switch to eval mode.
        return model.train()

    def log_model_size(self) -> None:
        trainable, total = count_parameters(self.model)
        log.info(
            "%s %s: %.2fM parameters, %.2fM trainable",
            self.stage, self.hparams.model_name_or_path, total / 1e6, trainable / 1e6,
        )  # fmt: skip

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        return adamw_with_schedule(
            self.model,
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            betas=tuple(hp.betas),
            warmup=hp.warmup,
            total_steps=self.trainer.estimated_stepping_batches,
            min_lr_ratio=hp.min_lr_ratio,
        )

    def export_metadata(self) -> dict[str, Any]:
        meta = super().export_metadata()
        meta["hparams"]["lora"] = lora_to_dict(self.hparams.lora)
        return meta

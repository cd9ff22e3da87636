"""SFTModule: supervised fine-tuning on demonstrations, the loss on response tokens only (InstructGPT step 1)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from lit_rlhf.data.collate import IGNORE_INDEX
from lit_rlhf.distributed import is_fsdp2
from lit_rlhf.generation import generate_responses
from lit_rlhf.models import LoraOptions, count_parameters, load_model, load_tokenizer, lora_to_dict
from lit_rlhf.optim import adamw_with_schedule
from lit_rlhf.stage import StageModule

log = logging.getLogger(__name__)


class SFTModule(StageModule):
    """Fine-tune a causal LM on demonstrations; write a Hugging Face directory at the end of fit.

    Args:
        model_name_or_path: The model to fine-tune: a local directory, a hub id, or ``scratch:gpt2`` /
            ``scratch:llama`` to build one from scratch (sized by ``model_config``; needs a tokenizer).
        tokenizer_name_or_path: Tokenizer directory or hub id; defaults to ``model_name_or_path``.
        model_config: Config overrides, e.g. ``{n_layer: 4, n_embd: 128}`` for a scratch model.
        export_dir: Where the final Hugging Face directory goes; default ``<trainer.default_root_dir>/hf``.
        learning_rate: Peak AdamW learning rate.
        weight_decay: AdamW weight decay (not applied to biases and norms).
        betas: AdamW betas.
        warmup: Linear warmup: a fraction of all steps when below 1, else a number of steps.
        min_lr_ratio: Cosine decay ends at this fraction of the peak (InstructGPT: 10%).
        dropout: Residual/attention/embedding dropout (InstructGPT SFT: 0.2); None keeps the model's own.
        dtype: Weights dtype: ``float32`` (default; use ``--trainer.precision=bf16-mixed`` for mixed precision),
            ``bfloat16``, ``float16`` or ``auto``.
        gradient_checkpointing: Recompute activations in backward to save memory.
        lora: Train LoRA adapters instead of all weights; the export has them merged. On the command line:
            ``--model.lora='{r: 16, alpha: 32}'`` or ``--model.lora.r=16`` (fields of ``LoraOptions``).
        trust_remote_code: Allow code from the model repository to run.
        num_sample_prompts: Validation prompts answered greedily and logged (a W&B table) at each validation.
        sample_max_new_tokens: Longest logged sample answer.
    """

    stage = "sft"

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer_name_or_path: str | None = None,
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
        num_sample_prompts: int = 4,
        sample_max_new_tokens: int = 64,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.export_dir = export_dir
        self.model = None
        self.tokenizer = None
        self.val_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.val_token_acc = MeanMetric()

    # -- model -------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load tokenizer and model lazily, after the DataModule has prepared the data (e.g. built the world)."""
        if self.model is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path or hp.model_name_or_path, hp.trust_remote_code)
        self.model = load_model(
            hp.model_name_or_path,
            self.tokenizer,
            model_config=hp.model_config,
            dtype=hp.dtype,
            trust_remote_code=hp.trust_remote_code,
            dropout=hp.dropout,
            gradient_checkpointing=hp.gradient_checkpointing,
            lora=hp.lora,
        )
        self.shard(self.model)
        trainable, total = count_parameters(self.model)
        log.info("model %s: %.2fM parameters, %.2fM trainable", hp.model_name_or_path, total / 1e6, trainable / 1e6)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (batch, length, vocab) for ``input_ids`` (position_ids too when the batch is packed)."""
        kwargs = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits

    # -- steps ---------------------------------------------------------------------------------------------------

    def trained_token_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed cross-entropy over completion tokens, and their number.

        With a completion-only loss the vocabulary-sized logits of prompt and padding positions are never used. When
        the model's logits are just its LM head over the last hidden states (:func:`plain_lm_head`), the head runs
        only at the positions whose next token is trained; other models (and FSDP2, whose root hooks gather the
        head's weights) take the full ``forward``.
        """
        parts = None if self._trainer is not None and is_fsdp2(self.trainer.strategy) else plain_lm_head(self.model)
        if parts is None:
            return completion_loss(self(batch), batch["labels"], reduction="sum")
        backbone, head = parts
        kwargs = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
        hidden = backbone(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kwargs
        ).last_hidden_state
        labels = batch["labels"][:, 1:]
        trained = labels != IGNORE_INDEX
        logits = head(hidden[:, :-1][trained])  # (trained tokens, vocab)
        return F.cross_entropy(logits.float(), labels[trained], reduction="sum"), trained.sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss_sum, n_tokens = self.trained_token_loss(batch)
        # Normalise by the tokens of the *global* batch: DDP averages gradients over ranks, so each rank scales
        # by world_size / global tokens and N processes take exactly the step of one process on the same batch.
        n_global = self.trainer.strategy.reduce(n_tokens.float(), reduce_op="sum").clamp(min=1)
        loss = loss_sum * self.trainer.world_size / n_global
        self.check_finite(loss, batch_idx)
        global_loss = self.trainer.strategy.reduce(loss_sum.detach(), reduce_op="sum") / n_global
        self.log("train/loss", global_loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        self.log("train/tokens", n_global, reduce_fx="sum", batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch)
        loss, _ = completion_loss(logits, batch["labels"])
        shifted_logits, shifted_labels = logits[:, :-1], batch["labels"][:, 1:]
        self.val_ppl.update(shifted_logits.float(), shifted_labels)
        mask = shifted_labels != IGNORE_INDEX
        correct = (shifted_logits.argmax(-1) == shifted_labels) & mask
        self.val_token_acc.update(correct.sum() / mask.sum().clamp(min=1), weight=mask.sum())
        n = len(batch["input_ids"])
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/perplexity", self.val_ppl, batch_size=n)
        self.log("val/token_accuracy", self.val_token_acc, batch_size=n)
        if batch_idx == 0 and self.hparams.num_sample_prompts > 0 and not self.trainer.sanity_checking:
            self.log_samples(batch)

    def log_samples(self, batch: dict[str, torch.Tensor]) -> None:
        """Answer the first validation prompts greedily; a W&B table (or the log, for other loggers)."""
        n = min(self.hparams.num_sample_prompts, len(batch["input_ids"]))
        prompts = [batch["input_ids"][i, : batch["prompt_lengths"][i]].tolist() for i in range(n)]
        responses = generate_responses(
            self.model,
            prompts,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            max_new_tokens=self.hparams.sample_max_new_tokens,
        )
        rows = [
            [self.global_step, self.tokenizer.decode(p), self.tokenizer.decode(r, skip_special_tokens=True)]
            for p, r in zip(prompts, responses, strict=True)
        ]
        log_table(self, "val/samples", ["step", "prompt", "response"], rows)

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


def completion_loss(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy over completion tokens.

    Args:
        logits: (batch, length, vocab) model outputs.
        labels: (batch, length) token ids, ``IGNORE_INDEX`` on prompt and padding positions.
        reduction: ``mean`` over counted tokens (0 when none count) or their ``sum``.

    Returns:
        The loss and the number of counted tokens.
    """
    shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shifted_labels = labels[:, 1:].reshape(-1)
    n_tokens = (shifted_labels != IGNORE_INDEX).sum()
    loss = F.cross_entropy(shifted_logits.float(), shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if reduction == "sum":
        return loss, n_tokens
    return loss / n_tokens.clamp(min=1), n_tokens


PLAIN_HEAD_MODELS = (
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
"""Causal LMs whose logits are exactly ``lm_head(last_hidden_state)`` (no soft-capping or logit scale)."""


def plain_lm_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(backbone, LM head) of a model in :data:`PLAIN_HEAD_MODELS` (LoRA-wrapped or not), else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA layers sit inside
    if type(base).__name__ not in PLAIN_HEAD_MODELS:
        return None
    backbone = getattr(base, base.base_model_prefix, None)
    head = base.get_output_embeddings()
    if backbone is None or head is None or getattr(base.config, "final_logit_softcapping", None):
        return None
    return backbone, head


def log_table(module: StageModule, key: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Log a table to W&B when the logger is W&B; otherwise write it to the Python log."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in module.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_text(key=key, columns=columns, data=rows)
            return
    for row in rows:
        log.info("%s %s", key, " | ".join(str(c) for c in row))

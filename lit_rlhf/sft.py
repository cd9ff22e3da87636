"""SFTModule: supervised fine-tuning on demonstrations, the loss on response tokens only (InstructGPT step 1)."""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.text import Perplexity

from lit_rlhf.data.collate import IGNORE_INDEX
from lit_rlhf.distributed import gathered, is_fsdp2
from lit_rlhf.generation import context_length, generate_greedy
from lit_rlhf.loggers import log_table
from lit_rlhf.losses import at_least_float32, completion_loss, plain_lm_head
from lit_rlhf.stage import FineTuningModule

log = logging.getLogger(__name__)


class SFTModule(FineTuningModule):
    """Fine-tune a causal LM on demonstrations; write a Hugging Face directory at the end of fit.

    The model, optimiser and export options (``model_name_or_path``, ``learning_rate``, ``dropout``, ``lora``, ...)
    are :class:`~lit_rlhf.stage.FineTuningModule`'s.

    Args:
        num_sample_prompts: Validation prompts answered greedily and logged (a W&B table) at each validation.
        sample_max_new_tokens: Longest logged sample answer.
        **kwargs: The options of :class:`~lit_rlhf.stage.FineTuningModule`.
    """

    stage = "sft"

    def __init__(self, num_sample_prompts: int = 4, sample_max_new_tokens: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.val_ppl = Perplexity(ignore_index=IGNORE_INDEX)
        self.val_token_acc = MeanMetric()

    # -- model -------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """Load tokenizer and model lazily, after the DataModule has prepared the data."""
        if self.model is not None:
            return
        self.model = self.load_model_and_tokenizer(head="causal_lm", with_lora=True)
        self.shard(self.model)
        self.log_model_size()

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
        return F.cross_entropy(at_least_float32(logits), labels[trained], reduction="sum"), trained.sum()

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
        self.val_ppl.update(at_least_float32(shifted_logits), shifted_labels)
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
        """Answer the first validation prompts greedily; a W&B table (without W&B, rows appended to
        ``<root>/samples/val_samples.jsonl``: :func:`lit_rlhf.loggers.log_table`).

        Every rank calls it on its own batch: under FSDP2 each first gathers the weights (a collective), then decodes
        its prompts for as many steps as they need, with no communication.
        """
        n = min(self.hparams.num_sample_prompts, len(batch["input_ids"]))
        prompts = [batch["input_ids"][i, : batch["prompt_lengths"][i]].tolist() for i in range(n)]
        context = context_length(self.model) or 2**31
        # an early, untrained model may not stop: never run past the positions the model has
        max_new_tokens = min(self.hparams.sample_max_new_tokens, context - max(map(len, prompts)))
        with gathered(self.model) as model:  # entered by every rank, whatever it decides below
            if max_new_tokens < 1:
                return
            responses = generate_greedy(
                model,
                prompts,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                max_new_tokens=max_new_tokens,
            )
        rows = [
            [self.global_step, self.tokenizer.decode(p), self.tokenizer.decode(r, skip_special_tokens=True)]
            for p, r in zip(prompts, responses, strict=True)
        ]
        log_table(self, "val/samples", ["step", "prompt", "response"], rows)

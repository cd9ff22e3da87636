"""Losses and model pieces the stages share (SFT, PPO-ptx): next-token loss on completion tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_rlhf.data.collate import IGNORE_INDEX


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or kept in float64: losses and statistics never run in half precision, nor lose float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


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
    loss = F.cross_entropy(at_least_float32(shifted_logits), shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
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

"""Losses and model pieces the stages share: next-token loss on completion tokens only (SFT, PPO-ptx), log-probabilities
of labels (PPO, DPO), the pairs of a K-wise ranking (RM, DPO)."""

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


def ranking_pairs(
    group_ids: torch.Tensor, ranks: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every ordered pair of completions of the same prompt, and its weight in InstructGPT's eq. 1.

    Args:
        group_ids: (n,) long, the prompt (0 .. n_groups-1) each completion belongs to.
        ranks: (n,) long, the rank of each completion within its prompt, 0 = best; equal ranks are a tie and form
            no pair.
        dtype: The weights' dtype: the loss's own (1/3 rounded to float32 is not float64's 1/3).

    Returns:
        better: (n_pairs,) long, index of the better completion of each pair.
        worse: (n_pairs,) long, index of the worse one.
        weights: (n_pairs,) ``dtype``, 1 / (number of pairs of that prompt): 1 / C(K, 2) without ties.
    """
    same_prompt = group_ids[:, None] == group_ids[None, :]
    ordered = ranks[:, None] < ranks[None, :]
    better, worse = torch.nonzero(same_prompt & ordered, as_tuple=True)
    pairs_per_group = torch.bincount(group_ids[better], minlength=int(group_ids.max()) + 1 if len(group_ids) else 0)
    weights = 1.0 / pairs_per_group[group_ids[better]].to(dtype)
    return better, worse, weights


def ranking_mean(
    pair_losses: torch.Tensor, better: torch.Tensor, weights: torch.Tensor, group_ids: torch.Tensor
) -> torch.Tensor:
    """The mean over prompts of the mean over their pairs (:func:`ranking_pairs`' ``better`` and ``weights``) of the
    pair losses: their weighted sum over the number of prompts that have a pair (the RM's eq. 1 and DPO's)."""
    n_groups = torch.unique(group_ids[better]).numel()
    return (weights * pair_losses).sum() / max(n_groups, 1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each label under ``softmax(logits / temperature)``.

    Computed as ``logits[label] / T - logsumexp(logits / T)``, which never materialises a full log-softmax;
    with ``temperature == 1`` no vocab-sized copy of ``logits`` is made either.

    Args:
        logits: (..., vocab) unnormalised scores.
        labels: (...) int64 token ids in ``[0, vocab)`` whose log-probability is wanted.
        temperature: the sampling temperature the tokens were drawn with; must be > 0.

    Returns:
        (...) the log-probability of each label, in ``logits``' dtype.

    Raises:
        ValueError: ``temperature`` is not positive.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature != 1.0:
        logits = logits / temperature
    label_logits = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return label_logits - torch.logsumexp(logits, dim=-1)

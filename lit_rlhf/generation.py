"""Batched generation from token ids (left-padded prompts, KV cache), shared by SFT samples, PPO and evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lit_rlhf.data.collate import pad_left


@torch.no_grad()
def generate_responses(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 32,
) -> list[list[int]]:
    """Generate a response for each prompt with Hugging Face ``generate`` and the KV cache.

    Args:
        model: A causal LM (``generate`` is called on it directly, never on a DDP wrapper).
        prompts: Token ids of each prompt.
        max_new_tokens: Longest response.
        do_sample: Sample (with ``temperature``, ``top_k``, ``top_p``) instead of greedy decoding.
        batch_size: Prompts per ``generate`` call.

    Returns:
        The response tokens of each prompt, cut after the first EOS (the EOS kept).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            input_ids, attention_mask = pad_left(chunk, pad_token_id)
            kwargs = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_token_id,
                eos_token_id=eos_token_id,
                **(kwargs if do_sample else {"do_sample": False}),
            )
            for row in generated[:, input_ids.shape[1] :].tolist():
                out.append(cut_at_eos(row, eos_token_id, pad_token_id))
    finally:
        model.train(was_training)
    return out


def cut_at_eos(tokens: Sequence[int], eos_token_id: int, pad_token_id: int | None = None) -> list[int]:
    """Tokens up to and including the first EOS; trailing padding removed when there is no EOS."""
    tokens = list(tokens)
    if eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id) + 1]
    while tokens and pad_token_id is not None and tokens[-1] == pad_token_id:
        tokens.pop()
    return tokens

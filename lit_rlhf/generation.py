"""Generation with Hugging Face ``generate`` and the KV cache, from left-padded prompts: SFT samples, PPO, evaluation.

Greedy decoding and sampling have distinct names:

* :func:`generate_greedy` takes the most likely token at every step (SFT samples, exact-match and few-shot checks,
  greedy evaluation).
* :func:`sample_responses` samples (temperature, top-k, top-p) with :class:`SeededSampler`: one random stream per
  prompt, seeded from the prompt's identity with :func:`sample_seed`, so a response does not depend on which other
  prompts share the batch. PPO's rollout is then the same with 1 or N processes and a resumed run samples what an
  unbroken one would; a sampled evaluation gives the same responses whatever the batch size or process count.
  :func:`sample_in_batches` does the same from lists of token ids, ``batch_size`` prompts a call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from lit_rlhf.data.collate import pad_left
from lit_rlhf.distributed import is_sharded
from lit_rlhf.losses import at_least_float32


def sample_seed(seed: int, *stream: int) -> int:
    """The seed of one random stream, e.g. ``sample_seed(seed, iteration, prompt_index)`` in PPO.

    Deterministic across processes and runs (the hash of a tuple of ints does not depend on ``PYTHONHASHSEED``).
    """
    return hash((seed, *stream)) & (2**63 - 1)


class SeededSampler(LogitsProcessor):
    """Sampling inside greedy ``generate``: warp the logits, add Gumbel noise from one generator per row.

    ``argmax(z + G)`` with ``G`` i.i.d. Gumbel(0, 1) is an exact sample from ``softmax(z)`` (the Gumbel-max trick),
    so greedy decoding of the perturbed logits samples from the warped distribution. Each row draws its noise
    from its own generator, so its sample never depends on the other rows of the batch.

    Args:
        seeds: One seed per row of the batch.
        temperature: Divide the logits by this (> 0).
        top_k: Keep only the ``top_k`` most likely tokens; 0 keeps all.
        top_p: Keep the smallest set of most likely tokens whose probability reaches ``top_p``; 1 keeps all.
        suppress_token_ids: Tokens never sampled (the pad token: it must only ever mean padding).
        device: Where the generators live (the logits' device).
    """

    def __init__(
        self,
        seeds: Sequence[int],
        temperature: float,
        top_k: int,
        top_p: float,
        suppress_token_ids: Sequence[int],
        device: torch.device,
    ) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.suppress_token_ids = list(suppress_token_ids)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        logits = at_least_float32(scores) / self.temperature
        if self.suppress_token_ids:
            logits[:, self.suppress_token_ids] = -torch.inf
        if 0 < self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            # drop a token when the tokens before it already reach top_p (the most likely token always stays)
            drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= self.top_p
            logits = logits.masked_fill(drop_sorted.scatter(1, order, drop_sorted), -torch.inf)
        uniform = torch.stack(
            [torch.rand(logits.shape[-1], generator=g, device=logits.device) for g in self.generators]
        )
        gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(torch.float32).tiny)))
        return logits + gumbel


def check_not_sharded(model: nn.Module) -> None:
    """Refuse to generate with FSDP2-sharded weights.

    Each decode step of a sharded model all-gathers every block's weights, a collective: ranks whose prompts stop at
    different lengths then decode different numbers of steps and their all-gathers stop matching (gloo fails with
    "Received data size doesn't match", nccl hangs). Every rank must first enter
    :func:`lit_rlhf.distributed.gathered` (the weights gathered once, as PPO's rollout does); inside it the model is
    whole and generation needs no communication, so ranks may generate different prompts, or only one rank may
    (transformers would still keep FSDP ranks in step, an all-reduce a decode step, unless told ``synced_gpus=False``).
    """
    if is_sharded(model):
        raise RuntimeError(
            "generate() on an FSDP2-sharded model: every rank must enter lit_rlhf.distributed.gathered(model) first "
            "(each decode step would all-gather, and ranks that stop at different steps fall out of step)"
        )


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (dropout off) inside the block; its previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def sample_responses(
    policy: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Tensor:
    """Sample one response per prompt with the KV cache, stopping each at its EOS; the pad token is never sampled.

    Args:
        policy: A causal LM (``generate`` is called on it directly, never on a DDP wrapper); under FSDP2, inside
            :func:`lit_rlhf.distributed.gathered` (see :func:`check_not_sharded`).
        input_ids: (batch, prompt_len) prompts, left-padded.
        attention_mask: (batch, prompt_len) bool, True on prompt tokens.
        seeds: (batch,) sampling seed of each prompt, see :func:`sample_seed`.
        max_new_tokens: Longest response.
        temperature, top_k, top_p: How the logits are warped before sampling, see :class:`SeededSampler`.

    Returns:
        (batch, response_len) the sampled tokens, ``response_len <= max_new_tokens``; rows that ended early are
        padded with ``pad_token_id`` after their EOS.
    """
    check_not_sharded(policy)
    sampler = SeededSampler(seeds, temperature, top_k, top_p, [pad_token_id], input_ids.device)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,  # the sampling happens in SeededSampler; greedy takes its argmax
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    with _eval_mode(policy):
        generated = policy.generate(
            input_ids=input_ids,
            attention_mask=attention_mask.long(),
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
            synced_gpus=False,  # the weights are whole (check_not_sharded): no rank waits for another
        )
    return generated[:, input_ids.shape[1] :]


def _in_batches(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    batch_size: int,
    pad_token_id: int,
    eos_token_id: int,
    generate_batch: Callable[[Tensor, Tensor, slice], Tensor],
) -> list[list[int]]:
    """Left-pad ``batch_size`` prompts at a time, generate with ``generate_batch(input_ids, attention_mask, rows)``
    (``rows``: the batch's prompts in ``prompts``), and cut each response after its first EOS."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = slice(start, start + batch_size)
        input_ids, attention_mask = pad_left(prompts[rows], pad_token_id)
        responses = generate_batch(input_ids.to(device), attention_mask.to(device), rows)
        out.extend(cut_at_eos(row, eos_token_id, pad_token_id) for row in responses.tolist())
    return out


def context_length(model: nn.Module) -> int | None:
    """The longest sequence the model's positions allow (``n_positions`` / ``max_position_embeddings``), if known."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@torch.no_grad()
def generate_greedy(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_id: int,
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[list[int]]:
    """The greedy response to each prompt.

    Args:
        model: A causal LM (``generate`` is called on it directly, never on a DDP wrapper); under FSDP2, inside
            :func:`lit_rlhf.distributed.gathered` (see :func:`check_not_sharded`).
        prompts: Token ids of each prompt.
        max_new_tokens: Longest response.
        batch_size: Prompts per ``generate`` call.

    Returns:
        The response tokens of each prompt, cut after the first EOS (the EOS kept).
    """

    def greedy(input_ids: Tensor, attention_mask: Tensor, rows: slice) -> Tensor:
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            do_sample=False,
            synced_gpus=False,  # the weights are whole (check_not_sharded): no rank waits for another
        )
        return generated[:, input_ids.shape[1] :]

    check_not_sharded(model)
    with _eval_mode(model):
        return _in_batches(model, prompts, batch_size, pad_token_id, eos_token_id, greedy)


def sample_in_batches(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    pad_token_id: int,
    eos_token_id: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 32,
) -> list[list[int]]:
    """A sampled response to each prompt, by :func:`sample_responses`, ``batch_size`` prompts a call.

    Each prompt samples from its own stream (``seeds``), so the responses do not depend on ``batch_size`` or on which
    prompts are sampled together.

    Args:
        model: A causal LM (``generate`` is called on it directly, never on a DDP wrapper).
        prompts: Token ids of each prompt.
        seeds: The sampling seed of each prompt, see :func:`sample_seed`.
        max_new_tokens: Longest response.
        temperature, top_k, top_p: How the logits are warped before sampling, see :class:`SeededSampler`.
        batch_size: Prompts per ``generate`` call.

    Returns:
        The response tokens of each prompt, cut after the first EOS (the EOS kept).
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"one seed per prompt: got {len(seeds)} seeds for {len(prompts)} prompts")

    def sample(input_ids: Tensor, attention_mask: Tensor, rows: slice) -> Tensor:
        return sample_responses(
            model,
            input_ids,
            attention_mask.bool(),
            seeds[rows],
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )

    return _in_batches(model, prompts, batch_size, pad_token_id, eos_token_id, sample)


def cut_at_eos(tokens: Sequence[int], eos_token_id: int, pad_token_id: int | None = None) -> list[int]:
    """Tokens up to and including the first EOS; trailing padding removed when there is no EOS."""
    tokens = list(tokens)
    if eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id) + 1]
    while tokens and pad_token_id is not None and tokens[-1] == pad_token_id:
        tokens.pop()
    return tokens
